"""libvgpu's modules form layers: no module calls into a higher layer (tests/check_layers.sh on the objects).

The table lives in check_layers.sh and, with the reasons, in the comment at the top of src/process.c; the
two must agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from libvgpu_harness import BUILD, LIBVGPU, Built

CHECK = LIBVGPU / "tests" / "check_layers.sh"


def _check(objdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), str(objdir)], capture_output=True, text=True, timeout=60)


def _objects_with(tmp_path: Path, replaced: dict[str, str]) -> Path:
    """A copy of the release objects where each `name`.o of `replaced` is compiled from its source instead."""
    objdir = tmp_path / "obj"
    shutil.copytree(BUILD / "obj", objdir)
    cc = os.environ.get("CC", "cc")
    for name, source in replaced.items():
        src = tmp_path / f"{name}.c"
        src.write_text(source)
        subprocess.run([cc, "-c", "-fPIC", str(src), "-o", str(objdir / f"{name}.o")], check=True, timeout=60)
    return objdir


def test_release_objects_respect_the_layers(built: Built) -> None:
    proc = _check(BUILD / "obj")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^layers: ok \((\d+) cross-module references checked\)$", proc.stdout, re.M), (
        proc.stdout
    )


def test_an_upward_call_fails_the_check(built: Built, tmp_path: Path) -> None:
    # region.c (layer 2) calling the SM controller (layer 4) and the process init (only the hooks may).
    objdir = _objects_with(
        tmp_path,
        {
            "region": "extern void vgpu_sm_atfork_child(void);\nextern int vgpu_init(void);\n"
            "int vgpu_region_upward(void) { vgpu_sm_atfork_child(); return vgpu_init(); }\n"
        },
    )
    proc = _check(objdir)
    assert proc.returncode != 0
    assert "region (layer 2) uses vgpu_sm_atfork_child, defined in smctl (layer 4)" in proc.stdout
    assert "region (layer 2) uses vgpu_init, defined in process (layer 7)" in proc.stdout
    assert "layers: ok" not in proc.stdout


def test_hooks_may_call_vgpu_init_and_nothing_else_of_process(built: Built, tmp_path: Path) -> None:
    process = "int vgpu_init(void) { return 1; }\nvoid vgpu_process_other(void) {}\n"
    allowed = _objects_with(
        tmp_path / "allowed",
        {
            "process": process,
            "hooks_launch": "extern int vgpu_init(void);\nint cuLaunchKernel(void) { return vgpu_init(); }\n",
        },
    )
    proc = _check(allowed)
    assert proc.returncode == 0, proc.stdout
    refused = _objects_with(
        tmp_path / "refused",
        {
            "process": process,
            "hooks_launch": "extern void vgpu_process_other(void);\n"
            "int cuLaunchKernel(void) { vgpu_process_other(); return 0; }\n",
        },
    )
    proc = _check(refused)
    assert proc.returncode != 0
    assert "hooks_launch (layer 5) uses vgpu_process_other, defined in process (layer 7)" in proc.stdout


def test_a_module_without_a_layer_fails_the_check(built: Built, tmp_path: Path) -> None:
    objdir = _objects_with(tmp_path, {"unplaced": "int vgpu_unplaced(void) { return 0; }\n"})
    proc = _check(objdir)
    assert proc.returncode != 0
    assert "unplaced.o has no layer" in proc.stdout


def test_every_source_file_has_a_layer_and_process_c_documents_the_same_table() -> None:
    table = subprocess.run([str(CHECK), "--table"], capture_output=True, text=True, check=True).stdout
    layers = {module: int(layer) for module, layer in (line.split() for line in table.splitlines())}
    sources = {p.stem for p in (LIBVGPU / "src").iterdir() if p.suffix in (".c", ".S")}
    assert sources == set(layers), sorted(sources ^ set(layers))
    header = (LIBVGPU / "src" / "process.c").read_text().split("*/", 1)[0]
    documented: dict[str, int] = {}
    for m in re.finditer(r"^ \*\s+(\d)\s+(\w+\.[cS](?:,\s*\w+\.[cS])*)", header, re.M):
        for name in m.group(2).split(","):
            documented[Path(name.strip()).stem] = int(m.group(1))
    assert documented == layers
