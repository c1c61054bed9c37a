"""`hami.io/node-nvidia-register`: HAMi's Go JSON array and the legacy colon form
(docs/hami-wire.md#node-register-encoding)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.codecs import (
    WireFormatError,
    decode_node_devices,
    encode_mig_profile,
    encode_node_devices,
)
from services.common.model import DeviceInfo, MigPlacement, MigProfile

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)

# Spec 2.3, verbatim: two T4s with split 10. Index 0, numa 0 and health false are omitted (omitempty).
T4_EXAMPLE = (
    '[{"id":"GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76","count":10,"devmem":15360,"devcore":100,'
    '"type":"NVIDIA-Tesla T4","mode":"hami-core","health":true},'
    '{"id":"GPU-ebe7c3f7-303d-558d-435e-99a160631fe4","index":1,"count":10,"devmem":15360,"devcore":100,'
    '"type":"NVIDIA-Tesla T4","numa":1,"mode":"hami-core","health":true}]'
)
T4_DEVICES = [
    DeviceInfo(
        id="GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76",
        index=0,
        count=10,
        devmem=15360,
        devcore=100,
        type="NVIDIA-Tesla T4",
        numa=0,
        mode="hami-core",
        health=True,
    ),
    DeviceInfo(
        id="GPU-ebe7c3f7-303d-558d-435e-99a160631fe4",
        index=1,
        count=10,
        devmem=15360,
        devcore=100,
        type="NVIDIA-Tesla T4",
        numa=1,
        mode="hami-core",
        health=True,
    ),
]

# Spec 2.3, verbatim legacy (<= v2.7) value: two V100s as 9-field colon-terminated records.
V100_LEGACY_EXAMPLE = (
    "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true,0,hami-core:"
    "GPU-0fc3…,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true,1,hami-core:"
)

MIG_1G5GB = MigProfile(
    name="1g.5gb", memory_mb=4864, core=15, slice_count=1, placements=(MigPlacement(6, 1),)
)
MIG_1G5GB_WIRE = (
    '{"name":"1g.5gb","memoryMB":4864,"core":15,"sliceCount":1,"placements":[{"start":6,"size":1}]}'
)


def test_t4_example_decodes_to_the_registered_values() -> None:
    assert decode_node_devices(T4_EXAMPLE) == T4_DEVICES


def test_t4_devices_encode_to_the_example_byte_for_byte() -> None:
    assert encode_node_devices(T4_DEVICES) == T4_EXAMPLE


def test_mig_profile_uses_the_compact_wire_form() -> None:
    assert encode_mig_profile(MIG_1G5GB) == MIG_1G5GB_WIRE


def test_mig_device_places_mig_profiles_between_mode_and_health() -> None:
    device = DeviceInfo(
        id="GPU-0", count=7, devmem=40960, devcore=100, type="A100", mode="mig", mig_profiles=(MIG_1G5GB,)
    )
    encoded = encode_node_devices([device])
    assert encoded == (
        '[{"id":"GPU-0","count":7,"devmem":40960,"devcore":100,"type":"A100","mode":"mig",'
        f'"migProfiles":[{MIG_1G5GB_WIRE}],"health":true}}]'
    )
    assert decode_node_devices(encoded) == [device]


def test_marshal_node_devices_fixture_is_equal_after_unmarshal() -> None:
    # HAMi TestMarshalNodeDevices: the device has no mode, and the expected JSON spells out numa 0.
    device = DeviceInfo(
        id="id-1", index=1, count=1, devmem=1024, devcore=10, type="type", mode="", health=True
    )
    expected = (
        '[{"index":1,"id":"id-1","count":1,"devmem":1024,"devcore":10,"type":"type","numa":0,"health":true}]'
    )
    assert decode_node_devices(encode_node_devices([device])) == decode_node_devices(expected) == [device]


def test_instance_count_and_unknown_keys_are_ignored() -> None:
    value = (
        '[{"id":"GPU-0","count":7,"devicevendor":"NVIDIA","custominfo":{"a":1},"mode":"mig",'
        '"migProfiles":[{"name":"1g.5gb","memoryMB":5120,"core":14,"sliceCount":1,"instanceCount":7,'
        '"multiprocessorCount":14,"placements":[{"start":6,"size":1}]}]}]'
    )
    [device] = decode_node_devices(value)
    assert device.mig_profiles == (MigProfile("1g.5gb", 5120, 14, 1, (MigPlacement(6, 1),)),)
    assert "instanceCount" not in encode_node_devices([device])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("  \n", [], id="blank"),
        pytest.param("[]", [], id="empty-array"),
        pytest.param("null", [], id="json-null"),
        pytest.param(
            '[{"id":"x"}]',
            [
                DeviceInfo(
                    id="x", index=0, count=0, devmem=0, devcore=0, type="", numa=0, mode="", health=False
                )
            ],
            id="missing-keys-take-go-zero-values",
        ),
        pytest.param(
            '[{"ID":"x","Index":2,"COUNT":3,"DevMem":4,"devCore":5,"TYPE":"T","Numa":6,"MODE":"m","Health":true,'
            '"MIGPROFILES":[{"NAME":"p","memorymb":1,"Core":2,"SLICECOUNT":3,"Placements":[{"START":4,"Size":5}]}]}]',
            [
                DeviceInfo(
                    "x", 2, 3, 4, 5, "T", 6, "m", True, (MigProfile("p", 1, 2, 3, (MigPlacement(4, 5),)),)
                )
            ],
            id="keys-are-case-insensitive-like-go",
        ),
        pytest.param(
            '[{"id":"x","count":1,"Count":2}]',
            [DeviceInfo("x", count=2, mode="", health=False)],
            id="later-duplicate-key-wins",
        ),
        pytest.param(
            '[{"id":"x","count":null,"health":null,"migProfiles":null}]',
            [DeviceInfo("x", mode="", health=False)],
            id="null-leaves-zero-value",
        ),
        pytest.param(
            '[{"id":"x","count":2147483647,"numa":-1,"index":18446744073709551615}]',
            [DeviceInfo("x", index=2**64 - 1, count=2**31 - 1, numa=-1, mode="", health=False)],
            id="range-limits-of-go-types",
        ),
        pytest.param(
            "GPU-a,10,32768,100,NVIDIA-Tesla V100,1,false:",
            [
                DeviceInfo(
                    "GPU-a",
                    index=0,
                    count=10,
                    devmem=32768,
                    devcore=100,
                    type="NVIDIA-Tesla V100",
                    numa=1,
                    mode="hami-core",
                    health=False,
                )
            ],
            id="legacy-7-field-defaults-index-0-mode-hami-core",
        ),
        pytest.param(
            "GPU-a,1,2,3,T,0,T,4,mig:GPU-b,1,2,3,T,0,0:",
            [
                DeviceInfo("GPU-a", 4, 1, 2, 3, "T", 0, "mig", True),
                DeviceInfo("GPU-b", 0, 1, 2, 3, "T", 0, health=False),
            ],
            id="legacy-mixed-9-and-7-fields-go-bools",
        ),
        pytest.param("GPU-a,1,2,3,T,0,true", None, id="legacy-without-colon-is-rejected"),
    ],
)
def test_decode_node_devices(value: str, expected: list[DeviceInfo] | None) -> None:
    if expected is None:
        with pytest.raises(WireFormatError, match="neither a JSON array nor legacy"):
            decode_node_devices(value)
    else:
        assert decode_node_devices(value) == expected


def test_legacy_v100_example_decodes() -> None:
    first, second = decode_node_devices(V100_LEGACY_EXAMPLE)
    assert first == DeviceInfo(
        id="GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec",
        index=0,
        count=10,
        devmem=32768,
        devcore=100,
        type="NVIDIA-Tesla V100-PCIE-32GB",
        numa=0,
        mode="hami-core",
        health=True,
    )
    assert (second.id, second.index, second.mode, second.health) == ("GPU-0fc3…", 1, "hami-core", True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('[{"id":"GPU-1","count":"10"}]', "device #0 ('GPU-1'): key 'count' must be an integer"),
        (
            '[{"id":"GPU-1","count":1.5}]',
            "key 'count' must be an integer in [-2147483648, 2147483647], got 1.5",
        ),
        ('[{"id":"GPU-1","count":10.0}]', "key 'count' must be an integer"),
        ('[{"id":"GPU-1","devmem":2147483648}]', "key 'devmem' must be an integer"),
        ('[{"id":"GPU-1","index":-1}]', "key 'index' must be an integer in [0, "),
        (
            '[{"id":"GPU-1","health":"true"}]',
            "device #0 ('GPU-1'): key 'health' must be a boolean, got 'true'",
        ),
        ('[{"id":"GPU-1","health":1}]', "key 'health' must be a boolean"),
        ('[{"id":"GPU-1","count":true}]', "key 'count' must be an integer"),
        ('[{"id":7}]', "device #0: key 'id' must be a string, got 7"),
        ('[{"id":"G","type":{"a":1}}]', "key 'type' must be a string, got {'a': 1}"),
        ('[{"id":"GPU-1","migProfiles":{}}]', "key 'migProfiles' must be an array of objects"),
        (
            '[{"id":"GPU-1","migProfiles":[{"name":"1g","placements":[{"start":-1}]}]}]',
            "MIG profile '1g' placement #0: key 'start'",
        ),
        ('[{"id":"a"},{"id":"b","numa":"0"}]', "device #1 ('b'): key 'numa'"),
        ("[1]", "device #0 must be a JSON object, got 1"),
        ("[null]", "device #0 must be a JSON object, got None"),
        ('{"id":"x"}', "must be a JSON array of devices"),
        ('[{"id":"x",', "is not valid JSON"),
        ('[{"id":"x","count":NaN}]', "is not valid JSON"),
        ("GPU-a,1,2,3,T,0:", "has 6 comma-separated fields; want 7"),
        ("GPU-a,1,2,3,T,0,true,0:", "has 8 comma-separated fields"),
        ("GPU-a,ten,2,3,T,0,true:", "count 'ten' must be an integer"),
        ("GPU-a,1,2,3,T,0,yes:", "health 'yes' is not a boolean"),
        ("GPU-a,1,2,3,T,0,true,-1,hami-core:", "index '-1' must be an integer in [0, "),
        ("GPU-a,1,2,3,T, 0,true:", "numa ' 0' must be an integer"),
    ],
)
def test_decode_node_devices_errors_name_the_device_and_key(value: str, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        decode_node_devices(value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (DeviceInfo("GPU-1", count=2**31), "count must be an integer"),
        (DeviceInfo("GPU-1", index=-1), "index must be an integer"),
        (DeviceInfo("GPU-1", mig_profiles=(MigProfile("1g", 1, 1, -1),)), "sliceCount must be an integer"),
    ],
)
def test_encode_node_devices_refuses_values_go_cannot_hold(device: DeviceInfo, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        encode_node_devices([device])


def test_strings_are_escaped_like_go() -> None:
    device = DeviceInfo("GPU-<1>", type='A&B "x"\u2028é', mode="")
    encoded = encode_node_devices([device])
    assert encoded == ('[{"id":"GPU-\\u003c1\\u003e","type":"A\\u0026B \\"x\\"\\u2028é","health":true}]')
    assert decode_node_devices(encoded) == [device]


mig_profiles = st.builds(
    MigProfile,
    name=TEXT,
    memory_mb=INT32,
    core=INT32,
    slice_count=st.integers(0, 2**32 - 1),
    placements=st.lists(
        st.builds(MigPlacement, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=3
    ).map(tuple),
)
devices = st.builds(
    DeviceInfo,
    id=TEXT,
    index=st.integers(0, 2**64 - 1),
    count=INT32,
    devmem=INT32,
    devcore=INT32,
    type=TEXT,
    numa=st.integers(-(2**63), 2**63 - 1),
    mode=TEXT,
    health=st.booleans(),
    mig_profiles=st.lists(mig_profiles, max_size=2).map(tuple),
)


@given(st.lists(devices, max_size=4))
def test_encode_then_decode_is_identity(devs: list[DeviceInfo]) -> None:
    assert decode_node_devices(encode_node_devices(devs)) == devs
