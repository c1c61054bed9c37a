#!/usr/bin/env python3
"""Generate kube-local's Kubernetes protobuf schema from the pinned k8s.io/api and k8s.io/apimachinery.

kube-local speaks ``application/vnd.kubernetes.protobuf`` (docs/kubelocal-differences.md#protobuf) with the
wire format of the very release sim/controlplane/go.mod pins. This script takes that release's own
``generated.proto`` files from the Go module cache (``go mod download -json``, run in sim/controlplane so
the versions are go.mod's) and writes, under sim/kubelocal/pb/:

* ``k8s.binpb``: a FileDescriptorSet of the served groups and their imports, compiled by grpcio-tools'
  protoc (``--descriptor_set_out --include_imports``). kube-local loads it into a descriptor pool at run
  time: no generated Python modules, whose ``k8s.io`` package directories Python could not import anyway.
* ``k8s_json.json``: how each message's fields appear in Kubernetes JSON, read from the Go struct tags of
  the same packages (``json:"name,omitempty,omitzero"``, pointer or not, inlined embedded structs, Go
  types that are slices), which a .proto cannot say but the Go JSON encoding the real server uses does.

Both are committed, so ``make build``/``make run`` need no Go; ``--check`` (run by ``make test`` through
tests/kubelocal/test_protobuf_schema.py) regenerates into a temporary directory and compares byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTROLPLANE = REPO_ROOT / "sim" / "controlplane"
DEFAULT_OUT = REPO_ROOT / "sim" / "kubelocal" / "pb"
DESCRIPTORS = "k8s.binpb"
JSON_FIELDS = "k8s_json.json"
MODULES = ("k8s.io/api", "k8s.io/apimachinery")
# The packages whose types kube-local serves (and the apimachinery ones every type refers to).
PACKAGES = (
    "k8s.io/api/core/v1",
    "k8s.io/api/policy/v1",
    "k8s.io/api/coordination/v1",
    "k8s.io/api/admissionregistration/v1",
    "k8s.io/apimachinery/pkg/apis/meta/v1",
    "k8s.io/apimachinery/pkg/runtime",
    "k8s.io/apimachinery/pkg/runtime/schema",
    "k8s.io/apimachinery/pkg/api/resource",
    "k8s.io/apimachinery/pkg/util/intstr",
)

_PROTO_PACKAGE_RE = re.compile(r"^package\s+([\w.]+);", re.M)
_STRUCT_RE = re.compile(r"^type\s+(\w+)\s+struct\s*\{\s*$(.*?)^\}", re.M | re.S)
_SLICE_TYPE_RE = re.compile(r"^type\s+(\w+)\s+\[\]\S+\s*$", re.M)
# A struct field: `Name Type `tags`` or an embedded `Type `tags``.
_FIELD_RE = re.compile(r"^\s*(?:(\w+)\s+)?(\S+)\s+`([^`]*)`")
_TAG_RE = re.compile(r'(\w+):"([^"]*)"')


def module_dirs() -> dict[str, tuple[str, Path]]:
    """module path -> (version, directory in the Go module cache), as sim/controlplane/go.mod pins them."""
    if shutil.which("go") is None:
        raise SystemExit(
            "gen_k8s_protos: `go` is not on PATH (Go >= 1.26 is needed to read the module cache)"
        )
    result = subprocess.run(
        ["go", "mod", "download", "-json", *MODULES],
        cwd=CONTROLPLANE,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"gen_k8s_protos: go mod download failed:\n{result.stdout}{result.stderr}")
    found: dict[str, tuple[str, Path]] = {}
    for document in re.split(r"(?<=\})\s*(?=\{)", result.stdout.strip()):
        info = json.loads(document)
        found[info["Path"]] = (info["Version"], Path(info["Dir"]))
    missing = [m for m in MODULES if m not in found]
    if missing:
        raise SystemExit(f"gen_k8s_protos: go mod download did not report {missing}")
    return found


def package_dir(modules: dict[str, tuple[str, Path]], package: str) -> Path:
    for module, (_, directory) in modules.items():
        if package == module or package.startswith(module + "/"):
            return directory / package[len(module) :].lstrip("/")
    raise SystemExit(f"gen_k8s_protos: no module holds {package}")


def json_fields(proto_package: str, go_sources: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """message full name -> {proto field name: [json name, flags]} from a package's Go struct tags.

    Flags: ``e`` omitempty, ``z`` omitzero, ``p`` a pointer, ``i`` an embedded struct whose fields Go's
    JSON encoding inlines. A Go type that is a slice (``type Verbs []string``) is recorded as
    ``{"@slice": ["", ""]}``: its protobuf message wraps ``items``, its JSON is the bare array."""
    table: dict[str, dict[str, list[str]]] = {}
    for source in go_sources:
        for name in _SLICE_TYPE_RE.findall(source):
            table[f"{proto_package}.{name}"] = {"@slice": ["", ""]}
        for name, body in _STRUCT_RE.findall(source):
            fields: dict[str, list[str]] = {}
            for line in body.splitlines():
                match = _FIELD_RE.match(line)
                if match is None:
                    continue
                field_name, go_type, raw_tags = match.groups()
                tags = dict(_TAG_RE.findall(raw_tags))
                if "protobuf" not in tags or "json" not in tags:
                    continue
                # go-to-protobuf names an embedded field without name= after its type, lowerCamel.
                go_name = field_name or go_type.lstrip("*").rsplit(".", 1)[-1]
                proto_name = next(
                    (p[5:] for p in tags["protobuf"].split(",") if p.startswith("name=")),
                    go_name[:1].lower() + go_name[1:],
                )
                json_name, *options = tags["json"].split(",")
                if json_name == "-":
                    continue
                flags = "e" if "omitempty" in options else ""
                flags += "z" if "omitzero" in options else ""
                flags += "p" if go_type.startswith("*") else ""
                if field_name is None and not json_name:
                    flags += "i"
                fields[proto_name] = [json_name or (field_name or ""), flags]
            if fields:
                table[f"{proto_package}.{name}"] = fields
    return table


def generate(out_dir: Path) -> None:
    """Write the descriptor set and the JSON field table into out_dir (which must exist)."""
    modules = module_dirs()
    with tempfile.TemporaryDirectory(prefix="gen_k8s_protos_") as tmp:
        include = Path(tmp)
        for module, (_, directory) in modules.items():
            link = include / module
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(directory, target_is_directory=True)
        protos = [f"{package}/generated.proto" for package in PACKAGES]
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--descriptor_set_out={(out_dir / DESCRIPTORS).resolve()}",
            "--include_imports",
            *protos,
        ]
        result = subprocess.run(cmd, cwd=include, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"gen_k8s_protos: protoc failed with exit code {result.returncode}")
    table: dict[str, dict[str, list[str]]] = {}
    for package in PACKAGES:
        directory = package_dir(modules, package)
        proto_text = (directory / "generated.proto").read_text(encoding="utf-8")
        proto_package = _PROTO_PACKAGE_RE.search(proto_text)
        if proto_package is None:
            raise SystemExit(f"gen_k8s_protos: no package statement in {package}/generated.proto")
        sources = [
            p.read_text(encoding="utf-8")
            for p in sorted(directory.glob("*.go"))
            if not p.name.endswith("_test.go") and not p.name.startswith("zz_generated")
        ]
        table.update(json_fields(proto_package.group(1), sources))
    versions = {module: version for module, (version, _) in sorted(modules.items())}
    lines = [f'  "@versions": {json.dumps(versions, sort_keys=True)}']
    lines += [f"  {json.dumps(name)}: {json.dumps(table[name], sort_keys=True)}" for name in sorted(table)]
    (out_dir / JSON_FIELDS).write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if not args.check:
        out.mkdir(parents=True, exist_ok=True)
        generate(out)
        print(f"gen_k8s_protos: wrote {out / DESCRIPTORS} and {out / JSON_FIELDS}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gen_k8s_protos_check_") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = [
            name
            for name in (DESCRIPTORS, JSON_FIELDS)
            if not (out / name).is_file() or (out / name).read_bytes() != (fresh / name).read_bytes()
        ]
    if stale:
        for name in stale:
            print(f"stale: {out / name}")
        print(
            "gen_k8s_protos: out of date with the pinned k8s.io modules; run `make k8s-protos`",
            file=sys.stderr,
        )
        return 1
    print(f"gen_k8s_protos: {out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
