"""kube-local's Kubernetes protobuf codec (sim/kubelocal/pb), by tables: JSON -> protobuf -> JSON gives the
object back, the special apimachinery types convert as Go's JSON shows them, Go's omitempty/omitzero/
pointer/inline rules decide what a decoded message shows, and bad input names the field at fault.
The same codec against the real server's own bytes is in test_protobuf_real.py."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from sim.kubelocal.pb.codec import (
    MAGIC,
    CodecError,
    UnknownKind,
    decode_object,
    decode_watch_frames,
    encode_object,
    encode_watch_frame,
    message_to_json,
)
from sim.kubelocal.pb.schema import schema
from sim.kubelocal.pb.special import format_duration, parse_duration

POD: dict[str, Any] = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "train",
        "namespace": "ml",
        "uid": "5d0c6a1e-0000-4000-8000-000000000001",
        "resourceVersion": "42",
        "generation": 1,
        "creationTimestamp": "2026-01-02T03:04:05Z",
        "labels": {"app": "train"},
        "annotations": {"hami.io/vgpu-devices-allocated": "GPU-1,NVIDIA,4096,30:;"},
        "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u", "controller": True}
        ],
    },
    "spec": {
        "containers": [
            {
                "name": "trainer",
                "image": "busybox:1.36",
                "command": ["sleep", "3600"],
                "env": [
                    {"name": "A", "value": "1"},
                    {
                        "name": "NODE",
                        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
                    },
                ],
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {
                    "limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096", "cpu": "500m"},
                    "requests": {"memory": "1Gi"},
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "initialDelaySeconds": 3,
                    "periodSeconds": 10,
                },
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
                "securityContext": {"privileged": False, "runAsUser": 0},
            }
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "host", "hostPath": {"path": "/var/run", "type": "Directory"}},
        ],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"gpu": "yes"},
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 0,
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "kube-vgpu-scheduler",
        "securityContext": {},
        "nodeName": "gpu-node-a",
        "hostPID": True,
    },
    "status": {
        "phase": "Running",
        "podIP": "10.244.1.5",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": "2026-01-02T03:04:06Z",
            }
        ],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": True,
                "restartCount": 0,
                "image": "busybox:1.36",
                "imageID": "",
                "state": {"running": {"startedAt": "2026-01-02T03:04:07Z"}},
                "lastState": {},
            }
        ],
    },
}
LEASE = {
    "kind": "Lease",
    "apiVersion": "coordination.k8s.io/v1",
    "metadata": {"name": "kube-vgpu-scheduler", "namespace": "kube-system"},
    "spec": {
        "holderIdentity": "scheduler-a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-02T03:04:05.123456Z",
        "renewTime": "2026-01-02T03:04:15.000001Z",
        "leaseTransitions": 0,
    },
}
STATUS = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'Pod "x" is invalid: metadata.name: Required value',
    "reason": "Invalid",
    "details": {
        "name": "x",
        "kind": "Pod",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "metadata.name"}],
    },
    "code": 422,
}
EVICTION = {
    "kind": "Eviction",
    "apiVersion": "policy/v1",
    "metadata": {"name": "train", "namespace": "ml"},
    "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u"}},
}
WEBHOOKS = {
    "kind": "MutatingWebhookConfiguration",
    "apiVersion": "admissionregistration.k8s.io/v1",
    "metadata": {"name": "vgpu.hami.io"},
    "webhooks": [
        {
            "name": "vgpu.hami.io",
            "clientConfig": {"url": "https://127.0.0.1:9443/mutate", "caBundle": "Y2EtYnVuZGxl"},
            "rules": [
                {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
            ],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "failurePolicy": "Ignore",
        }
    ],
}
POD_LIST = {
    "kind": "PodList",
    "apiVersion": "v1",
    "metadata": {"resourceVersion": "77"},
    "items": [{k: v for k, v in POD.items() if k not in ("kind", "apiVersion")}],
}
NAMESPACE = {
    "kind": "Namespace",
    "apiVersion": "v1",
    "metadata": {"name": "ml"},
    "spec": {"finalizers": ["kubernetes"]},
    "status": {"phase": "Active"},
}


@pytest.mark.parametrize(
    "obj",
    [POD, LEASE, STATUS, EVICTION, WEBHOOKS, POD_LIST, NAMESPACE],
    ids=lambda o: str(o["kind"]),
)
def test_json_protobuf_json_gives_the_object_back(obj: dict[str, Any]) -> None:
    data = encode_object(obj)
    assert data.startswith(MAGIC)
    assert decode_object(data) == obj


def test_the_envelope_carries_apiversion_and_kind_and_the_message_lacks_them() -> None:
    sch = schema()
    envelope_desc = sch.descriptor("k8s.io.apimachinery.pkg.runtime.Unknown")
    assert envelope_desc is not None
    envelope: Any = sch.message_class(envelope_desc)()
    envelope.ParseFromString(encode_object(LEASE)[len(MAGIC) :])
    assert (envelope.typeMeta.apiVersion, envelope.typeMeta.kind) == ("coordination.k8s.io/v1", "Lease")
    assert (envelope.contentEncoding, envelope.contentType) == ("", "")
    lease_desc = sch.descriptor("k8s.io.api.coordination.v1.Lease")
    assert lease_desc is not None
    assert "kind" not in lease_desc.fields_by_name
    lease: Any = sch.message_class(lease_desc)()
    lease.ParseFromString(envelope.raw)
    assert lease.spec.holderIdentity == "scheduler-a"
    # MicroTime keeps microseconds on the wire: seconds and nanos.
    assert lease.spec.acquireTime.nanos == 123456000


def _decoded(kind_api: tuple[str, str], message_fields: dict[str, Any]) -> dict[str, Any]:
    """Encode a message built field by field (as a Go client would set them) and decode it as JSON."""
    api_version, kind = kind_api
    sch = schema()
    desc = sch.kind_descriptor(api_version, kind)
    assert desc is not None
    msg: Any = sch.message_class(desc)()
    for path, value in message_fields.items():
        *parents, last = path.split(".")
        target = msg
        for part in parents:
            target = getattr(target, part)
        setattr(target, last, value)
    return message_to_json(msg)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # A Go client writes every non-pointer scalar, zero or not: omitempty hides the zero ones.
        ({"metadata.name": "n", "metadata.generateName": "", "metadata.generation": 0}, {"name": "n"}),
        # creationTimestamp is omitempty,omitzero in this release: a zero Time is left out.
        ({"metadata.name": "n", "metadata.creationTimestamp.seconds": 0}, {"name": "n"}),
        (
            {"metadata.name": "n", "metadata.creationTimestamp.seconds": 1767323045},
            {"name": "n", "creationTimestamp": "2026-01-02T03:04:05Z"},
        ),
        # A pointer is shown whenever set, zero included (deletionGracePeriodSeconds: 0).
        (
            {"metadata.name": "n", "metadata.deletionGracePeriodSeconds": 0},
            {"name": "n", "deletionGracePeriodSeconds": 0},
        ),
    ],
)
def test_go_omitempty_omitzero_and_pointers_decide_what_metadata_shows(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert _decoded(("v1", "Namespace"), fields)["metadata"] == expected


def test_structs_are_always_shown_and_nil_slices_without_omitempty_are_null() -> None:
    decoded = _decoded(("v1", "Namespace"), {"metadata.name": "n"})
    # Go's omitempty never hides a struct: spec and status are there, empty.
    assert decoded == {"metadata": {"name": "n"}, "spec": {}, "status": {}}
    pod = _decoded(("v1", "Pod"), {"metadata.name": "p"})
    # PodSpec.containers has no omitempty: a nil slice marshals as null, as a Go client sends it.
    assert pod["spec"] == {"containers": None}
    condition = _decoded(("v1", "Pod"), {"metadata.name": "p"})["status"]
    assert condition == {}


def test_inlined_embedded_structs_are_flattened_both_ways() -> None:
    sch = schema()
    desc = sch.descriptor("k8s.io.api.core.v1.Probe")
    assert desc is not None
    probe: Any = sch.message_class(desc)()
    probe.handler.exec.command.append("true")
    probe.periodSeconds = 5
    assert message_to_json(probe) == {"exec": {"command": ["true"]}, "periodSeconds": 5}
    container = POD["spec"]["containers"][0]
    round_tripped = decode_object(encode_object(POD))["spec"]["containers"][0]
    assert round_tripped["livenessProbe"] == container["livenessProbe"]
    assert round_tripped["readinessProbe"] == {"tcpSocket": {"port": 8080}}


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (2_000_000, "2ms"),
        (1_000_000_000, "1s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (-5_000_000_000, "-5s"),
    ],
)
def test_durations_read_and_print_as_go_does(nanoseconds: int, text: str) -> None:
    assert format_duration(nanoseconds) == text
    assert parse_duration(text, "d") == nanoseconds


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            {**LEASE, "spec": {"leaseDurationSeconds": "fifteen"}},
            "spec.leaseDurationSeconds: expected an integer",
        ),
        ({**LEASE, "spec": {"acquireTime": "yesterday"}}, "spec.acquireTime: 'yesterday' is not an RFC 3339"),
        ({**POD, "spec": {"containers": [{"name": 3}]}}, "spec.containers[0].name: expected a string"),
        ({**POD, "metadata": {"labels": {"a": 1}}}, "metadata.labels[a]: expected a string"),
        (
            {**LEASE, "spec": {"leaseDurationSeconds": 2**40}},
            "spec.leaseDurationSeconds: 1099511627776 is out of range for int32",
        ),
        (
            {
                **POD,
                "spec": {
                    "containers": [
                        {"ports": [{"containerPort": 80}], "livenessProbe": {"tcpSocket": {"port": True}}}
                    ]
                },
            },
            "spec.containers[0].livenessProbe.tcpSocket.port: expected an integer or a string",
        ),
    ],
)
def test_a_value_that_does_not_fit_names_its_field(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_object(obj)


def test_unknown_kinds_and_malformed_bodies_are_refused_with_a_reason() -> None:
    with pytest.raises(UnknownKind, match="ConfigMapX"):
        encode_object({"kind": "ConfigMapX", "apiVersion": "v1"})
    with pytest.raises(CodecError, match="prefix"):
        decode_object(b'{"kind": "Pod"}')
    with pytest.raises(CodecError, match="malformed"):
        decode_object(MAGIC + b"\xff\xff\xff")


def test_watch_frames_are_length_prefixed_watch_events_around_envelopes() -> None:
    frames = encode_watch_frame({"type": "ADDED", "object": LEASE}) + encode_watch_frame(
        {"type": "ERROR", "object": STATUS}
    )
    (length,) = struct.unpack(">I", frames[:4])
    events, rest = decode_watch_frames(frames + b"\x00\x00")
    assert rest == b"\x00\x00"
    assert [e["type"] for e in events] == ["ADDED", "ERROR"]
    assert events[0]["object"] == LEASE
    assert events[1]["object"] == STATUS
    assert 4 + length < len(frames)  # two frames, the first one's length honoured
