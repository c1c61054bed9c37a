"""The committed stubs under gen/python match what scripts/gen_protos.py generates from protos/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"
GEN_ROOT = REPO_ROOT / "gen" / "python"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def copy_gen(tmp_path: Path) -> Path:
    dest = tmp_path / "python"
    shutil.copytree(GEN_ROOT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_committed_stubs_are_fresh() -> None:
    result = run_script("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_committed_tree_has_every_expected_module() -> None:
    protos = sorted((REPO_ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files found"
    for proto in protos:
        rel = proto.relative_to(REPO_ROOT / "protos").with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (GEN_ROOT / f"{rel}{suffix}").is_file(), f"{rel}{suffix} not generated"
        package = GEN_ROOT / rel.parent
        while package != GEN_ROOT:
            assert (package / "__init__.py").is_file(), f"no __init__.py in {package}"
            package = package.parent


def test_check_reports_stale_missing_and_extra_files(tmp_path: Path) -> None:
    gen = copy_gen(tmp_path)
    stale = gen / "kubevgpu" / "device" / "v1" / "device_pb2.py"
    stale.write_bytes(stale.read_bytes() + b"# edited by hand\n")
    missing = gen / "kubevgpu" / "monitor" / "v1" / "monitor_service_pb2.pyi"
    missing.unlink()
    extra = gen / "kubevgpu" / "scheduler" / "v1" / "leftover_pb2.py"
    extra.write_text("")

    result = run_script("--check", "--out", str(gen))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"stale: {stale}" in result.stdout
    assert f"missing: {missing}" in result.stdout
    assert f"extra: {extra}" in result.stdout
    # The check never writes: the drifted tree is left as it was.
    assert stale.read_bytes().endswith(b"# edited by hand\n")
    assert not missing.exists()


def test_regenerating_repairs_drift_and_ignores_caches(tmp_path: Path) -> None:
    gen = copy_gen(tmp_path)
    target = gen / "kubevgpu" / "kubelet" / "podresources" / "v1" / "api_pb2_grpc.py"
    target.write_text("broken\n")
    (gen / "kubevgpu" / "obsolete" / "v1").mkdir(parents=True)
    (gen / "kubevgpu" / "obsolete" / "v1" / "old_pb2.py").write_text("")
    cache = gen / "kubevgpu" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\0")

    assert run_script("--check", "--gen-root", str(gen)).returncode == 1
    result = run_script("--out", str(gen))
    assert result.returncode == 0, result.stdout + result.stderr

    assert target.read_bytes() == (GEN_ROOT / target.relative_to(gen)).read_bytes()
    assert not (gen / "kubevgpu" / "obsolete").exists()
    check = run_script("--check", "--out", str(gen))
    assert check.returncode == 0, check.stdout + check.stderr
