"""The generated protobuf schema of kube-local (sim/kubelocal/pb/k8s.binpb, k8s_json.json): it matches the
k8s.io/api and k8s.io/apimachinery release sim/controlplane/go.mod pins, describes every served type, and
the Go struct tags were read for every field (docs/kubelocal-differences.md#protobuf)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.kubelocal.pb.schema import schema
from sim.kubelocal.pb.special import SPECIAL
from sim.kubelocal.resources import ALL_RESOURCES

REPO = Path(__file__).resolve().parents[2]
GO_MOD = REPO / "sim" / "controlplane" / "go.mod"


def test_the_schema_is_of_the_pinned_release() -> None:
    pinned = dict(re.findall(r"^\s*(k8s\.io/api(?:machinery)?) => \S+ (v\S+)$", GO_MOD.read_text(), re.M))
    assert pinned, "sim/controlplane/go.mod pins no k8s.io/api / k8s.io/apimachinery"
    assert schema().versions == pinned


@pytest.mark.skipif(
    shutil.which("go") is None and os.environ.get("CI") != "true",
    reason="go is not on PATH (the check reads the Go module cache; it runs under CI)",
)
def test_the_committed_schema_is_what_the_generator_makes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_k8s_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_served_type_its_list_and_the_meta_types_have_a_message() -> None:
    sch = schema()
    for rt in ALL_RESOURCES:
        for kind in (rt.kind, rt.list_kind):
            assert sch.kind_descriptor(rt.api_version, kind) is not None, f"{rt.api_version} {kind}"
    for api_version, kind in [
        ("v1", "Status"),
        ("v1", "DeleteOptions"),
        ("v1", "Binding"),
        ("policy/v1", "Eviction"),
        ("meta.k8s.io/v1", "PartialObjectMetadata"),
        ("v1", "WatchEvent"),
    ]:
        assert sch.kind_descriptor(api_version, kind) is not None, f"{api_version} {kind}"
    assert sch.kind_descriptor("v1", "NoSuchKind") is None
    assert sch.kind_descriptor("nope.example.com/v1", "Pod") is None


def test_every_field_of_a_served_message_has_its_go_json_shape() -> None:
    sch = schema()
    missing = []
    for rt in ALL_RESOURCES:
        desc = sch.kind_descriptor(rt.api_version, rt.kind)
        assert desc is not None
        seen: set[str] = set()
        stack = [desc]
        while stack:
            message = stack.pop()
            if message.full_name in seen or message.full_name in SPECIAL or message.GetOptions().map_entry:
                continue
            seen.add(message.full_name)
            shapes = sch.fields.get(message.full_name, {})
            for fd in message.fields:
                if fd.name not in shapes:
                    missing.append(f"{message.full_name}.{fd.name}")
                if fd.message_type is not None:
                    stack.append(fd.message_type)
    assert not missing, f"fields without a Go JSON shape: {missing[:20]}"
