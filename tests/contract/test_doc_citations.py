"""Every citation in the repository points at a heading that exists in `docs/`.

Code, tests, libvgpu, deploy files and docs cite our own contract documents as `docs/<file>.md#<anchor>`,
where the anchor is the GitHub slug of a heading. This test fails, naming file:line, on a citation whose file
or anchor does not exist, on the old citation styles that pointed at documents outside the repository, and
on test references in `docs/weaknesses.md` that no longer exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
THIS_FILE = Path(__file__).resolve()

SCANNED_DIRS = ("services", "sim", "tests", "bench", "scripts", "libvgpu", "deploy", "docs")
SCANNED_FILES = ("README.md", "Makefile")
SCANNED_SUFFIXES = frozenset(
    {".py", ".pyi", ".c", ".h", ".S", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".json", ".cfg", ".mk"}
)
SKIPPED_DIR_NAMES = frozenset({"build", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".ruff_cache"})

#: `docs/<name>.md` with an optional `#anchor`, anywhere in a line.
DOC_REF = re.compile(r"docs/([A-Za-z0-9_.-]+?\.md)(?:#([A-Za-z0-9_-]+))?")
#: Markdown links inside docs/: `](file.md#anchor)`, `](#anchor)`.
MD_LINK = re.compile(r"\]\((?!https?:)([A-Za-z0-9_./-]*?\.md)?(?:#([A-Za-z0-9_-]+))?\)")
#: Citation styles that pointed at documents outside the repository.
OLD_STYLE = re.compile(
    r"spec ?§|spec [0-9]|§ ?[0-9]|known weakness|weakness(?:es)? [0-9]|fixtures? [0-9]|fixture table [0-9]"
    r"|[0-9]\.[0-9]+ fixture|shared[/]spec|hami-control-plane\.md|hami-core\.md|known-weaknesses\.md"
    r"|engineering-notes"
)
#: A bare contract file name outside docs/ (inside docs/ relative links are normal).
BARE_DOC_NAME = re.compile(r"(?<![A-Za-z0-9_./-])(hami-wire|libvgpu-contract|kubelet-wire|weaknesses)\.md")
#: `path::test_name` references in docs/weaknesses.md.
TEST_REF = re.compile(r"`((?:tests|libvgpu)/[A-Za-z0-9_./-]+\.(?:py|c))::([A-Za-z_][A-Za-z0-9_]*)`")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces become '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_slugs(markdown: str) -> set[str]:
    """Anchors of every heading outside code fences; repeated slugs get GitHub's `-1`, `-2` suffixes."""
    seen: dict[str, int] = {}
    slugs: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = HEADING.match(line)
        if in_fence or match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def doc_slugs() -> dict[str, set[str]]:
    """Doc file name -> its anchors, for every markdown file in docs/."""
    return {p.name: heading_slugs(p.read_text(encoding="utf-8")) for p in sorted(DOCS.glob("*.md"))}


def _check_ref(
    where: str, doc: str, anchor: str | None, slugs_by_doc: Mapping[str, set[str]]
) -> Iterator[str]:
    if doc not in slugs_by_doc:
        yield f"{where}: docs/{doc} does not exist"
    elif anchor is not None and anchor not in slugs_by_doc[doc]:
        yield f"{where}: docs/{doc} has no heading with anchor #{anchor}"


def citation_problems(rel_path: str, text: str, slugs_by_doc: Mapping[str, set[str]]) -> list[str]:
    """Problems of one file: bad `docs/...` references, old-style citations, and (for files under docs/)
    broken relative markdown links. `rel_path` is relative to the repository root."""
    in_docs = rel_path.startswith("docs/")
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{rel_path}:{number}"
        for match in DOC_REF.finditer(line):
            problems.extend(_check_ref(where, match.group(1), match.group(2), slugs_by_doc))
        old = OLD_STYLE.search(line)
        if old is not None:
            problems.append(f"{where}: old-style citation {old.group(0)!r}; cite docs/<file>.md#<anchor>")
        if in_docs:
            own = Path(rel_path).name
            for match in MD_LINK.finditer(line):
                target, anchor = match.group(1), match.group(2)
                if target is None and anchor is None:
                    continue
                doc = Path(target).name if target else own
                if target and Path(target).parent != Path("."):
                    continue  # links out of docs/ are not contract citations
                problems.extend(_check_ref(where, doc, anchor, slugs_by_doc))
        else:
            for match in BARE_DOC_NAME.finditer(line):
                problems.append(f"{where}: cite {match.group(0)} as docs/{match.group(0)}")
    return problems


def missing_test_references(rel_path: str, text: str, root: Path) -> list[str]:
    """`path::name` test references (docs/weaknesses.md) whose file or test function does not exist."""
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in TEST_REF.finditer(line):
            path, name = match.group(1), match.group(2)
            target = root / path
            if not target.is_file():
                problems.append(f"{rel_path}:{number}: {path} does not exist")
                continue
            source = target.read_text(encoding="utf-8", errors="replace")
            pattern = rf"^\s*(?:async\s+)?def {name}\(" if path.endswith(".py") else rf"\b{name}\s*\("
            if re.search(pattern, source, re.MULTILINE) is None:
                problems.append(f"{rel_path}:{number}: {path} has no test {name}")
    return problems


def scanned_files() -> Iterator[Path]:
    for name in SCANNED_FILES:
        path = ROOT / name
        if path.is_file():
            yield path
    for top in SCANNED_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if any(
                part in SKIPPED_DIR_NAMES or part.endswith(".egg-info")
                for part in path.relative_to(ROOT).parts
            ):
                continue
            if not path.is_file() or path.resolve() == THIS_FILE:
                continue
            if path.suffix in SCANNED_SUFFIXES or path.name == "Makefile":
                yield path


# --- the repository -----------------------------------------------------------------------------------------


def test_contract_docs_exist() -> None:
    names = set(doc_slugs())
    assert {"hami-wire.md", "libvgpu-contract.md", "kubelet-wire.md", "weaknesses.md"} <= names


def test_every_citation_resolves() -> None:
    slugs_by_doc = doc_slugs()
    problems: list[str] = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        problems.extend(citation_problems(path.relative_to(ROOT).as_posix(), text, slugs_by_doc))
    assert not problems, "bad citations:\n" + "\n".join(problems)


def test_weaknesses_name_tests_that_exist() -> None:
    text = (DOCS / "weaknesses.md").read_text(encoding="utf-8")
    assert TEST_REF.search(text) is not None
    problems = missing_test_references("docs/weaknesses.md", text, ROOT)
    assert not problems, "missing tests:\n" + "\n".join(problems)


def test_every_weakness_names_a_test() -> None:
    sections = re.split(r"^## ", (DOCS / "weaknesses.md").read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    assert sections
    untested = [s.splitlines()[0] for s in sections if TEST_REF.search(s) is None]
    assert not untested, f"weaknesses without a test: {untested}"


# --- the checker itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Fit", "fit"),
        ("Node lock", "node-lock"),
        ("GPU score and sort", "gpu-score-and-sort"),
        ("kube-scheduler profile", "kube-scheduler-profile"),
        ("Lock, health & quota cases", "lock-health--quota-cases"),
        ("`dlsym` (x86-64)", "dlsym-x86-64"),
        ("  Shared region layout  ", "shared-region-layout"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_heading_slugs_skip_fences_and_number_repeats() -> None:
    markdown = "# Title\n## Fit\n```\n## Not a heading\n```\n### Fit\n#### Node lock ##\n"
    assert heading_slugs(markdown) == {"title", "fit", "fit-1", "node-lock"}


SLUGS = {"hami-wire.md": {"fit", "node-lock"}, "weaknesses.md": {"phantom-usage"}}


@pytest.mark.parametrize(
    ("rel_path", "line", "expected"),
    [
        ("services/a.py", "# see docs/hami-wire.md#fit", []),
        ("services/a.py", "# see (docs/hami-wire.md)", []),
        (
            "services/a.py",
            "# see docs/hami-wire.md#fits",
            ["services/a.py:1: docs/hami-wire.md has no heading"],
        ),
        (
            "libvgpu/src/x.c",
            "/* docs/nowhere.md#fit */",
            ["libvgpu/src/x.c:1: docs/nowhere.md does not exist"],
        ),
        ("tests/t.py", '"""Fit (spec 3.5)."""', ["tests/t.py:1: old-style citation 'spec 3'"]),
        ("tests/t.py", "# known weakness 3", ["tests/t.py:1: old-style citation 'known weakness'"]),
        ("deploy/x.yaml", "# HAMi (hami-control-plane.md §4)", ["deploy/x.yaml:1: old-style citation"]),
        (
            "libvgpu/README.md",
            "See `../shared" + "/spec/hami-core.md`.",  # split so a repository grep finds no real citation
            ["libvgpu/README.md:1: old-style citation"],
        ),
        ("sim/k.py", "# (kubelet-wire.md)", ["sim/k.py:1: cite kubelet-wire.md as docs/kubelet-wire.md"]),
        ("docs/hami-wire.md", "See [Fit](#fit) and [x](weaknesses.md#phantom-usage).", []),
        ("docs/hami-wire.md", "See [Fit](#fitt).", ["docs/hami-wire.md:1: docs/hami-wire.md has no heading"]),
        (
            "docs/weaknesses.md",
            "[x](hami-wire.md#nope)",
            ["docs/weaknesses.md:1: docs/hami-wire.md has no heading"],
        ),
        ("docs/weaknesses.md", "[x](../libvgpu/README.md)", []),
    ],
)
def test_citation_problems(rel_path: str, line: str, expected: list[str]) -> None:
    problems = citation_problems(rel_path, line, SLUGS)
    assert len(problems) == len(expected), problems
    for problem, prefix in zip(problems, expected, strict=True):
        assert problem.startswith(prefix), problem


def test_missing_test_references(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_real() -> None:\n    pass\n", encoding="utf-8")
    text = "- `tests/test_x.py::test_real`\n- `tests/test_x.py::test_gone`\n- `tests/test_y.py::test_real`\n"
    assert missing_test_references("docs/weaknesses.md", text, tmp_path) == [
        "docs/weaknesses.md:2: tests/test_x.py has no test test_gone",
        "docs/weaknesses.md:3: tests/test_y.py does not exist",
    ]
