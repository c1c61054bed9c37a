"""Pod device encoding `UUID,Type,mem,cores:` / `;` per container (docs/hami-wire.md#pod-device-encoding) and
legacy MIG UUIDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common import wire
from services.common.codecs import (
    MISSING_FIELDS_MESSAGE,
    WireFormatError,
    decode_pod_devices,
    decode_pod_single_device,
    encode_pod_devices,
    encode_pod_single_device,
    parse_mig_template_uuid,
)
from services.common.model import ContainerDevice, PodSingleDevice


def nv(uuid: str, mem: int, cores: int, type_: str = "NVIDIA") -> ContainerDevice:
    return ContainerDevice(uuid=uuid, type=type_, usedmem=mem, usedcores=cores)


# (slots, wire) pairs: the examples of docs/hami-wire.md#pod-device-encoding, then
# docs/hami-wire.md#codec-cases.
ENCODINGS = [
    pytest.param(
        [[nv("GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448", 3000, 30)]],
        "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448,NVIDIA,3000,30:;",
        id="one-container-one-gpu",
    ),
    pytest.param(
        [[nv("GPU-a", 3000, 0)], [nv("GPU-a", 5000, 0)]],
        "GPU-a,NVIDIA,3000,0:;GPU-a,NVIDIA,5000,0:;",
        id="two-app-containers",
    ),
    pytest.param(
        [[nv("GPU-a", 1000, 30), nv("GPU-b", 1000, 30)]],
        "GPU-a,NVIDIA,1000,30:GPU-b,NVIDIA,1000,30:;",
        id="one-container-two-gpus",
    ),
    pytest.param([[], [nv("GPU-a", 1000, 30)]], ";GPU-a,NVIDIA,1000,30:;", id="init-without-gpu-then-app"),
    pytest.param([[nv("UUID1", 1000, 30, "Type1")]], "UUID1,Type1,1000,30:;", id="hami-coding-one-device"),
    pytest.param(
        [[nv("UUID1", 1000, 30, "Type1"), nv("UUID2", 1000, 30, "Type1")]],
        "UUID1,Type1,1000,30:UUID2,Type1,1000,30:;",
        id="hami-coding-two-devices",
    ),
    pytest.param([], "", id="hami-coding-empty"),
]


@pytest.mark.parametrize(("slots", "value"), ENCODINGS)
def test_encode_pod_single_device(slots: PodSingleDevice, value: str) -> None:
    assert encode_pod_single_device(slots) == value


@pytest.mark.parametrize(("slots", "value"), ENCODINGS)
def test_decode_keeps_the_extra_empty_slot_after_the_trailing_semicolon(
    slots: PodSingleDevice, value: str
) -> None:
    assert decode_pod_single_device(value) == [*slots, []]


def test_hami_coding_fixture_decodes_to_two_slots_second_empty() -> None:
    assert decode_pod_single_device("UUID1,Type1,1000,30:;") == [[nv("UUID1", 1000, 30, "Type1")], []]


def test_empty_value_decodes_to_one_empty_slot() -> None:
    assert decode_pod_single_device("") == [[]]


def test_consumed_slots_stay_empty_and_reencoding_adds_one_trailing_slot() -> None:
    # After the device plugin consumed container 0 (docs/hami-wire.md#pod-device-encoding): indices must not
    # shift.
    value = ";GPU-b,NVIDIA,2000,8:;;"
    slots = decode_pod_single_device(value)
    assert slots == [[], [nv("GPU-b", 2000, 8)], [], []]
    assert encode_pod_single_device(slots) == value + ";"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "GPU-a,NVIDIA,1,2:garbage:;", [[nv("GPU-a", 1, 2)], []], id="piece-without-comma-ignored"
        ),
        pytest.param("::GPU-a,NVIDIA,1,2;", [[nv("GPU-a", 1, 2)], []], id="empty-pieces-ignored"),
        pytest.param("GPU-a,NVIDIA,1,2,extra:;", [[nv("GPU-a", 1, 2)], []], id="extra-fields-ignored"),
        pytest.param(
            "GPU-a,NVIDIA,2147483647,+7:;", [[nv("GPU-a", 2**31 - 1, 7)], []], id="int32-max-and-go-plus-sign"
        ),
        pytest.param("GPU-a,NVIDIA,1,2", [[nv("GPU-a", 1, 2)]], id="no-terminators"),
    ],
)
def test_decode_is_as_lenient_as_hami(value: str, expected: PodSingleDevice) -> None:
    assert decode_pod_single_device(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            "uuid,type,100:;", f"{MISSING_FIELDS_MESSAGE}: 'uuid,type,100' has 3 of 4 fields", id="3-fields"
        ),
        pytest.param("a,b:;", f"{MISSING_FIELDS_MESSAGE}: 'a,b'", id="2-fields"),
        pytest.param(
            "GPU-a,NVIDIA,x,1:;", "memory 'x' in 'GPU-a,NVIDIA,x,1' must be a non-negative int32", id="mem"
        ),
        pytest.param("GPU-a,NVIDIA,2147483648,1:;", "memory '2147483648'", id="mem-over-int32"),
        pytest.param("GPU-a,NVIDIA,1, 2:;", "cores ' 2' in", id="cores-with-space"),
        pytest.param("GPU-a,NVIDIA,1,-1:;", "cores '-1' in", id="negative-cores"),
        pytest.param(",NVIDIA,1,1:;", "missing device UUID or type in ',NVIDIA,1,1'", id="empty-uuid"),
        pytest.param("GPU-a,,1,1:;", "missing device UUID or type", id="empty-type"),
    ],
)
def test_decode_errors_quote_the_piece(value: str, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        decode_pod_single_device(value)
    assert message in str(excinfo.value)


def test_the_missing_fields_message_is_hamis() -> None:
    assert (
        MISSING_FIELDS_MESSAGE
        == "pod annotation format error, missing fields, do not use nodeName in task spec"
    )


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (nv("GPU:a", 1, 1), "UUID 'GPU:a' must be non-empty and free of"),
        (nv("GPU-a", 1, 1, "NV;IDIA"), "type 'NV;IDIA'"),
        (nv("", 1, 1), "UUID ''"),
        (nv("GPU-a", -1, 1), "usedmem must be an integer in [0, 2147483647], got -1"),
        (nv("GPU-a", 1, 2**31), "usedcores must be an integer"),
    ],
)
def test_encode_refuses_what_would_corrupt_the_annotation(device: ContainerDevice, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        encode_pod_single_device([[device]])
    assert message in str(excinfo.value)


def test_decode_pod_devices_reads_the_nvidia_annotation() -> None:
    annotations = {wire.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,3000,50:;GPU-b,NVIDIA,4000,60:;", "other": "x"}
    assert decode_pod_devices(annotations, wire.VGPU_DEVICES_ALLOCATED) == {
        wire.NVIDIA: [[nv("GPU-a", 3000, 50)], [nv("GPU-b", 4000, 60)], []]
    }


def test_decode_pod_devices_without_the_annotation_is_empty() -> None:
    assert decode_pod_devices({"other": "GPU-a,NVIDIA,1,1:;"}, wire.VGPU_DEVICES_ALLOCATED) == {}


def test_encode_pod_devices_writes_the_nvidia_slots_under_the_key() -> None:
    pod_devices = {wire.NVIDIA: [[nv("GPU-a", 3000, 50)], [nv("GPU-b", 4000, 60)]]}
    assert encode_pod_devices(pod_devices, wire.VGPU_DEVICES_TO_ALLOCATE) == {
        wire.VGPU_DEVICES_TO_ALLOCATE: "GPU-a,NVIDIA,3000,50:;GPU-b,NVIDIA,4000,60:;"
    }
    assert encode_pod_devices({}, wire.VGPU_DEVICES_TO_ALLOCATE) == {}


@pytest.mark.parametrize(
    ("uuid", "expected"),
    [
        ("GPU-…3269313[7-9]", (7, 9)),
        ("GPU-936619fc-bc6d-11ee-a5ba-ecf6b3269313[0-12]", (0, 12)),
        ("GPU-x[+3-4]", (3, 4)),
    ],
)
def test_parse_mig_template_uuid(uuid: str, expected: tuple[int, int]) -> None:
    assert parse_mig_template_uuid(uuid) == expected


@pytest.mark.parametrize(
    ("uuid", "message"),
    [
        ("GPU-abc", "has no '[<template>-<slot>]' suffix"),
        ("GPU-abc[7-9", "has no '[<template>-<slot>]' suffix"),
        ("GPU-abc]7-9[", "has no '[<template>-<slot>]' suffix"),
        ("GPU-abc[79]", "got '[79]'"),
        ("GPU-abc[7-9-1]", "got '[7-9-1]'"),
        ("GPU-abc[a-9]", "template and slot must be integers"),
        ("GPU-abc[7-]", "template and slot must be integers"),
    ],
)
def test_parse_mig_template_uuid_errors(uuid: str, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        parse_mig_template_uuid(uuid)
    assert message in str(excinfo.value)
    assert repr(uuid) in str(excinfo.value)


wire_tokens = st.text(st.characters(codec="utf-8", exclude_characters=",:;"), min_size=1, max_size=10)
container_devices = st.builds(
    ContainerDevice,
    uuid=wire_tokens,
    type=wire_tokens,
    usedmem=st.integers(0, 2**31 - 1),
    usedcores=st.integers(0, 2**31 - 1),
)


@given(st.lists(st.lists(container_devices, max_size=3), max_size=5))
def test_encode_then_decode_is_identity_plus_the_trailing_slot(slots: PodSingleDevice) -> None:
    encoded = encode_pod_single_device(slots)
    assert decode_pod_single_device(encoded) == [*slots, []]
    # Hence the pod-level codec round-trips once the trailing slot is dropped.
    decoded = decode_pod_devices({"k": encoded}, "k")
    assert decoded[wire.NVIDIA][:-1] == slots
