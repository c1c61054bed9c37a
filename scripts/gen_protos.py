#!/usr/bin/env python3
"""Generate the Python gRPC/protobuf stubs under gen/python from every .proto under protos/.

This is the single codegen entry point (``make protos``). One grpc_tools.protoc run with ``-I protos``
compiles all files, so every file keeps a unique include-relative name in the descriptor pool and the
generated imports (``from kubevgpu.device.v1 import device_pb2``) resolve with gen/python as a package root.
Outputs: ``*_pb2.py`` and ``*_pb2_grpc.py`` (grpcio-tools), ``*_pb2.pyi`` and ``*_pb2_grpc.pyi``
(mypy-protobuf), plus the ``__init__.py`` files protoc does not write and a ``py.typed`` marker.

``--check`` generates into a temporary directory and compares it byte for byte with the committed tree,
listing stale, missing and extra files and exiting 1 on any difference (the drift check; no git needed).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_GEN_ROOT = REPO_ROOT / "gen" / "python"
# Files that appear under the generated tree at run time and are never part of it.
IGNORED_DIRS = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
MARKER = "py.typed"


def find_protos(proto_root: Path) -> list[str]:
    """All .proto files under proto_root as sorted include-relative POSIX paths."""
    return sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto") if p.is_file())


def _plugin(name: str) -> str:
    """Path of a protoc plugin executable: the one next to this interpreter first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"gen_protos: {name} not found (install mypy-protobuf: make venv)")
    return found


def _well_known_include() -> str:
    """grpc_tools' bundled google/protobuf/*.proto, so imports of well-known types resolve."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("gen_protos: grpcio-tools is not installed (make venv)")
    return str(Path(spec.origin).resolve().parent / "_proto")


def generate(proto_root: Path, out_dir: Path) -> None:
    """Compile every proto under proto_root into out_dir (which must exist) and add package files."""
    protos = find_protos(proto_root)
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files under {proto_root}")
    out = str(out_dir.resolve())
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"-I{_well_known_include()}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    # Run from the proto root so disk paths equal include-relative names.
    result = subprocess.run(cmd, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"gen_protos: protoc failed with exit code {result.returncode}")
    _write_package_files(out_dir, protos)


def _write_package_files(out_dir: Path, protos: Sequence[str]) -> None:
    """Empty __init__.py in every directory from a top-level package down to each generated module."""
    packages: set[Path] = set()
    for proto in protos:
        parent = Path(proto).parent
        while parent != Path("."):
            packages.add(parent)
            parent = parent.parent
    for package in sorted(packages):
        (out_dir / package / "__init__.py").write_bytes(b"")
    for top in sorted({Path(p).parts[0] for p in protos if len(Path(p).parts) > 1}):
        (out_dir / top / MARKER).write_bytes(b"")


def list_files(root: Path) -> set[str]:
    """Files under root as POSIX relative paths, skipping caches."""
    files: set[str] = set()
    if not root.is_dir():
        return files
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in filenames:
            if name.endswith(IGNORED_SUFFIXES):
                continue
            files.add((Path(dirpath) / name).relative_to(root).as_posix())
    return files


def compare(expected_root: Path, actual_root: Path) -> tuple[list[str], list[str], list[str]]:
    """(stale, missing, extra): differing files, files not in actual, files only in actual."""
    expected = list_files(expected_root)
    actual = list_files(actual_root)
    stale = sorted(
        f for f in expected & actual if not filecmp.cmp(expected_root / f, actual_root / f, shallow=False)
    )
    return stale, sorted(expected - actual), sorted(actual - expected)


def check(proto_root: Path, gen_root: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh = Path(tmp)
        generate(proto_root, fresh)
        stale, missing, extra = compare(fresh, gen_root)
    if not (stale or missing or extra):
        print(f"gen_protos: {gen_root} is up to date")
        return 0
    for label, names in (("stale", stale), ("missing", missing), ("extra", extra)):
        for name in names:
            print(f"{label}: {gen_root / name}")
    print(f"gen_protos: {gen_root} is out of date with {proto_root}; run `make protos`", file=sys.stderr)
    return 1


def write(proto_root: Path, gen_root: Path) -> int:
    """Regenerate gen_root in place: write changed files, remove ones no longer generated."""
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh = Path(tmp)
        generate(proto_root, fresh)
        stale, missing, extra = compare(fresh, gen_root)
        for name in [*stale, *missing]:
            target = gen_root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / name, target)
        for name in extra:
            (gen_root / name).unlink()
    _remove_empty_dirs(gen_root)
    changed = len(stale) + len(missing) + len(extra)
    print(f"gen_protos: {len(list_files(gen_root))} files in {gen_root}, {changed} changed")
    return 0


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _dirnames, _filenames in sorted(os.walk(root), key=lambda t: -len(Path(t[0]).parts)):
        path = Path(dirpath)
        if path == root or path.name in IGNORED_DIRS:
            continue
        if not any(p for p in path.iterdir() if p.name not in IGNORED_DIRS):
            shutil.rmtree(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed stubs instead of writing them"
    )
    parser.add_argument(
        "--out",
        "--gen-root",
        dest="gen_root",
        type=Path,
        default=DEFAULT_GEN_ROOT,
        help=f"generated tree (default {DEFAULT_GEN_ROOT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--protos",
        dest="proto_root",
        type=Path,
        default=DEFAULT_PROTO_ROOT,
        help=f"proto include root (default {DEFAULT_PROTO_ROOT.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    proto_root: Path = args.proto_root.resolve()
    gen_root: Path = args.gen_root.resolve()
    if args.check:
        return check(proto_root, gen_root)
    gen_root.mkdir(parents=True, exist_ok=True)
    return write(proto_root, gen_root)


if __name__ == "__main__":
    sys.exit(main())
