"""Pure encoders and decoders for HAMi's annotation values (spec sections 2.1-2.4, 3.4, 3.5, 3.8 and 7.6).

Every decoder raises `WireFormatError` with a message that quotes the offending piece, so that whoever reads
the log or event can find and fix the annotation. Encoders produce byte-for-byte what HAMi v2.10 writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from services.common import wire
from services.common.model import (
    DEFAULT_DEVICE_MODE,
    CollapsedDevice,
    ContainerDevice,
    ContainerDevices,
    DeviceInfo,
    DeviceScoringWeights,
    MigPlacement,
    MigProfile,
    NodeLock,
    PodDevices,
    PodSingleDevice,
)

__all__ = [
    "MISSING_FIELDS_MESSAGE",
    "WireFormatError",
    "collapse_app_devices",
    "collapse_pod_devices",
    "decode_node_devices",
    "decode_pod_devices",
    "decode_pod_single_device",
    "encode_mig_profile",
    "encode_node_devices",
    "encode_node_lock",
    "encode_pod_devices",
    "encode_pod_single_device",
    "format_reasons",
    "parse_bool",
    "parse_cordon",
    "parse_device_scoring_weights",
    "parse_mig_template_uuid",
    "parse_node_lock",
    "parse_reasons",
    "parse_type_list",
    "parse_uuid_list",
]


class WireFormatError(ValueError):
    """An annotation value (or a value about to become one) that does not follow HAMi's wire format."""


_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT32_MAX: Final = 2**32 - 1
_UINT64_MAX: Final = 2**64 - 1

# Go's strconv.ParseInt/Atoi in base 10: an optional sign and ASCII digits, nothing else (no spaces, no "_").
_GO_INT_RE: Final = re.compile(r"[+-]?[0-9]+")


def _parse_go_int(text: str, lo: int, hi: int) -> int | None:
    if _GO_INT_RE.fullmatch(text) is None:
        return None
    value = int(text)
    return value if lo <= value <= hi else None


# --- Go JSON ------------------------------------------------------------------------------------------------

_LONE_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")
# Go's encoding/json escapes HTML-significant characters and the JavaScript line separators; Python does not.
_GO_EXTRA_ESCAPES: Final = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _go_json_string(value: str) -> str:
    """A JSON string literal exactly as Go's json.Marshal writes it (UTF-8 kept, invalid text as U+FFFD)."""
    text = json.dumps(_LONE_SURROGATE_RE.sub("\ufffd", value), ensure_ascii=False)
    for raw, escaped in _GO_EXTRA_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireFormatError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_str(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise WireFormatError(f"{what} must be a string, got {value!r}")
    return value


def encode_mig_profile(profile: MigProfile) -> str:
    """The compact form HAMi registers for one MIG profile (docs/hami-wire.md#codec-cases).

    None of these keys is `omitempty` in HAMi, so zero values are written out; `instanceCount` never is.
    """
    what = f"MIG profile {profile.name!r}"
    placements = ",".join(
        f'{{"start":{_check_int(f"{what} placement start", p.start, 0, _UINT32_MAX)},'
        f'"size":{_check_int(f"{what} placement size", p.size, 0, _UINT32_MAX)}}}'
        for p in profile.placements
    )
    return (
        f'{{"name":{_go_json_string(_check_str(f"{what} name", profile.name))},'
        f'"memoryMB":{_check_int(f"{what} memoryMB", profile.memory_mb, _INT32_MIN, _INT32_MAX)},'
        f'"core":{_check_int(f"{what} core", profile.core, _INT32_MIN, _INT32_MAX)},'
        f'"sliceCount":{_check_int(f"{what} sliceCount", profile.slice_count, 0, _UINT32_MAX)},'
        f'"placements":[{placements}]}}'
    )


def _encode_device(position: int, device: DeviceInfo) -> str:
    what = f"device #{position} ({device.id!r})"
    # Key order is HAMi's struct order and every key is `omitempty`: zero, false and empty values are left out
    # (index 0, numa 0 and health false included).
    members: list[str] = []
    if _check_str(f"{what} id", device.id):
        members.append(f'"id":{_go_json_string(device.id)}')
    for key, value, lo, hi in (
        ("index", device.index, 0, _UINT64_MAX),
        ("count", device.count, _INT32_MIN, _INT32_MAX),
        ("devmem", device.devmem, _INT32_MIN, _INT32_MAX),
        ("devcore", device.devcore, _INT32_MIN, _INT32_MAX),
    ):
        if _check_int(f"{what} {key}", value, lo, hi):
            members.append(f'"{key}":{value}')
    if _check_str(f"{what} type", device.type):
        members.append(f'"type":{_go_json_string(device.type)}')
    if _check_int(f"{what} numa", device.numa, _INT64_MIN, _INT64_MAX):
        members.append(f'"numa":{device.numa}')
    if _check_str(f"{what} mode", device.mode):
        members.append(f'"mode":{_go_json_string(device.mode)}')
    if device.mig_profiles:
        members.append(f'"migProfiles":[{",".join(encode_mig_profile(p) for p in device.mig_profiles)}]')
    if not isinstance(device.health, bool):
        raise WireFormatError(f"{what} health must be a boolean, got {device.health!r}")
    if device.health:
        members.append('"health":true')
    return "{" + ",".join(members) + "}"


def encode_node_devices(devices: Iterable[DeviceInfo]) -> str:
    """The `hami.io/node-nvidia-register` value: HAMi's Go JSON array (`MarshalNodeDevices`), compact."""
    return "[" + ",".join(_encode_device(i, d) for i, d in enumerate(devices)) + "]"


class _JsonObject:
    """A decoded JSON object keeping its members in order, duplicates included, for Go-style field lookup."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        self.pairs = pairs

    def fields(self, *names: str) -> dict[str, object]:
        """Members matched to `names` the way Go's decoder does: keys compare case-insensitively, unknown
        keys are ignored, a later duplicate overwrites an earlier one, and `null` leaves the field at its zero
        value."""
        by_folded = {name.casefold(): name for name in names}
        found: dict[str, object] = {}
        for key, value in self.pairs:
            name = by_folded.get(key.casefold())
            if name is None:
                continue
            if value is None:
                found.pop(name, None)
            else:
                found[name] = value
        return found


def _reject_constant(token: str) -> object:
    # Python's json module accepts NaN/Infinity; Go's does not, and neither may we.
    raise ValueError(f"{token} is not valid JSON")


def _load_go_json(value: str, what: str) -> object:
    try:
        return json.loads(value, object_pairs_hook=_JsonObject, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        snippet = value[max(0, err.pos - 20) : err.pos + 20]
        raise WireFormatError(
            f"{what} is not valid JSON: {err.msg} at position {err.pos} (near {snippet!r})"
        ) from None
    except ValueError as err:
        raise WireFormatError(f"{what} is not valid JSON: {err}") from None


def _json_int(found: Mapping[str, object], key: str, what: str, lo: int, hi: int) -> int:
    value = found.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireFormatError(
            f"{what}: key {key!r} must be an integer in [{lo}, {hi}], got {_plain(value)!r}"
        )
    return value


def _json_str(found: Mapping[str, object], key: str, what: str) -> str:
    value = found.get(key, "")
    if not isinstance(value, str):
        raise WireFormatError(f"{what}: key {key!r} must be a string, got {_plain(value)!r}")
    return value


def _json_objects(found: Mapping[str, object], key: str, what: str) -> list[_JsonObject]:
    value = found.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, _JsonObject) for item in value):
        raise WireFormatError(f"{what}: key {key!r} must be an array of objects, got {_plain(value)!r}")
    return [item for item in value if isinstance(item, _JsonObject)]


def _plain(value: object) -> object:
    """A decoded JSON value with `_JsonObject`s turned back into dicts, for readable error messages."""
    if isinstance(value, _JsonObject):
        return {k: _plain(v) for k, v in value.pairs}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _decode_mig_profile(obj: _JsonObject, what: str) -> MigProfile:
    found = obj.fields("name", "memoryMB", "core", "sliceCount", "placements")
    name = _json_str(found, "name", what)
    what = f"{what} MIG profile {name!r}"
    placements = []
    for i, item in enumerate(_json_objects(found, "placements", what)):
        place = item.fields("start", "size")
        where = f"{what} placement #{i}"
        placements.append(
            MigPlacement(
                start=_json_int(place, "start", where, 0, _UINT32_MAX),
                size=_json_int(place, "size", where, 0, _UINT32_MAX),
            )
        )
    return MigProfile(
        name=name,
        memory_mb=_json_int(found, "memoryMB", what, _INT32_MIN, _INT32_MAX),
        core=_json_int(found, "core", what, _INT32_MIN, _INT32_MAX),
        slice_count=_json_int(found, "sliceCount", what, 0, _UINT32_MAX),
        placements=tuple(placements),
    )


_DEVICE_KEYS: Final = (
    "id",
    "index",
    "count",
    "devmem",
    "devcore",
    "type",
    "numa",
    "mode",
    "migProfiles",
    "health",
)


def _decode_json_device(position: int, obj: object) -> DeviceInfo:
    if not isinstance(obj, _JsonObject):
        raise WireFormatError(
            f"node register annotation: device #{position} must be a JSON object, got {_plain(obj)!r}"
        )
    found = obj.fields(*_DEVICE_KEYS)
    raw_id = found.get("id", "")
    what = f"node register annotation: device #{position}" + (
        f" ({raw_id!r})" if isinstance(raw_id, str) else ""
    )
    health = found.get("health", False)
    if not isinstance(health, bool):
        raise WireFormatError(f"{what}: key 'health' must be a boolean, got {_plain(health)!r}")
    return DeviceInfo(
        id=_json_str(found, "id", what),
        index=_json_int(found, "index", what, 0, _UINT64_MAX),
        count=_json_int(found, "count", what, _INT32_MIN, _INT32_MAX),
        devmem=_json_int(found, "devmem", what, _INT32_MIN, _INT32_MAX),
        devcore=_json_int(found, "devcore", what, _INT32_MIN, _INT32_MAX),
        type=_json_str(found, "type", what),
        numa=_json_int(found, "numa", what, _INT64_MIN, _INT64_MAX),
        mode=_json_str(found, "mode", what),
        health=health,
        mig_profiles=tuple(_decode_mig_profile(p, what) for p in _json_objects(found, "migProfiles", what)),
    )


def _decode_legacy_record(record: str) -> DeviceInfo:
    fields = record.split(",")
    if len(fields) not in (7, 9):
        raise WireFormatError(
            f"legacy node register record {record!r} has {len(fields)} comma-separated fields; want 7 "
            "(id,count,devmem,devcore,type,numa,health) or 9 (... ,index,mode)"
        )

    def number(position: int, name: str, lo: int, hi: int) -> int:
        value = _parse_go_int(fields[position], lo, hi)
        if value is None:
            raise WireFormatError(
                f"legacy node register record {record!r}: {name} {fields[position]!r} must be an integer "
                f"in [{lo}, {hi}]"
            )
        return value

    count = number(1, "count", _INT32_MIN, _INT32_MAX)
    devmem = number(2, "devmem", _INT32_MIN, _INT32_MAX)
    devcore = number(3, "devcore", _INT32_MIN, _INT32_MAX)
    numa = number(5, "numa", _INT64_MIN, _INT64_MAX)
    try:
        health = parse_bool(fields[6])
    except WireFormatError:
        raise WireFormatError(
            f"legacy node register record {record!r}: health {fields[6]!r} is not a boolean"
        ) from None
    index, mode = 0, DEFAULT_DEVICE_MODE  # what 7-field records (before index/mode existed) imply
    if len(fields) == 9:
        index = number(7, "index", 0, _INT64_MAX)
        mode = fields[8]
    return DeviceInfo(
        id=fields[0],
        index=index,
        count=count,
        devmem=devmem,
        devcore=devcore,
        type=fields[4],
        numa=numa,
        mode=mode,
        health=health,
    )


def _decode_legacy_devices(value: str) -> list[DeviceInfo]:
    if ":" not in value:
        raise WireFormatError(
            f"node register annotation {value!r} is neither a JSON array nor legacy ':'-terminated records"
        )
    return [_decode_legacy_record(record) for record in value.split(":") if record]


def decode_node_devices(value: str) -> list[DeviceInfo]:
    """Devices from a `hami.io/node-nvidia-register` value: the JSON array (>= v2.8) or the legacy colon form.

    Missing JSON keys take Go's zero value (0, false, ""); an empty or blank value means no devices.
    """
    text = value.strip()
    if not text:
        return []
    # JSON starts with a bracket (or is null); the legacy form starts with a GPU UUID.
    if text[0] not in "[{" and text != "null":
        return _decode_legacy_devices(value)
    document = _load_go_json(value, "node register annotation")
    if document is None:
        return []
    if not isinstance(document, list):
        raise WireFormatError(f"node register annotation must be a JSON array of devices, got {value!r}")
    return [_decode_json_device(i, item) for i, item in enumerate(document)]


# --- Pod device encoding (docs/hami-wire.md#pod-device-encoding) --------------------------------------------

MISSING_FIELDS_MESSAGE: Final = (
    "pod annotation format error, missing fields, do not use nodeName in task spec"
)
_POD_SEPARATORS: Final = frozenset(",:;")


def _encode_container_device(device: ContainerDevice) -> str:
    for name, text in (("UUID", device.uuid), ("type", device.type)):
        if not isinstance(text, str) or not text or _POD_SEPARATORS & set(text):
            raise WireFormatError(f"device {name} {text!r} must be non-empty and free of ',', ':' and ';'")
    for name, number in (("usedmem", device.usedmem), ("usedcores", device.usedcores)):
        _check_int(f"device {device.uuid!r} {name}", number, 0, _INT32_MAX)
    return f"{device.uuid},{device.type},{device.usedmem},{device.usedcores}:"


def encode_pod_single_device(pod_single_device: Sequence[Sequence[ContainerDevice]]) -> str:
    """`UUID,Type,mem,cores:` per device and `;` after every container slot; no slots at all is ""."""
    return "".join("".join(_encode_container_device(d) for d in slot) + ";" for slot in pod_single_device)


def _decode_container_devices(slot: str) -> ContainerDevices:
    devices: ContainerDevices = []
    for piece in slot.split(":"):
        if "," not in piece:
            continue  # HAMi skips pieces without a comma (including the empty one after the final ':')
        fields = piece.split(",")
        if len(fields) < 4:
            raise WireFormatError(f"{MISSING_FIELDS_MESSAGE}: {piece!r} has {len(fields)} of 4 fields")
        uuid, device_type = fields[0], fields[1]
        if not uuid or not device_type:
            raise WireFormatError(f"pod annotation format error, missing device UUID or type in {piece!r}")
        usedmem = _parse_go_int(fields[2], 0, _INT32_MAX)
        if usedmem is None:
            raise WireFormatError(
                f"pod annotation format error: memory {fields[2]!r} in {piece!r} must be a non-negative int32"
            )
        usedcores = _parse_go_int(fields[3], 0, _INT32_MAX)
        if usedcores is None:
            raise WireFormatError(
                f"pod annotation format error: cores {fields[3]!r} in {piece!r} must be a non-negative int32"
            )
        devices.append(ContainerDevice(uuid=uuid, type=device_type, usedmem=usedmem, usedcores=usedcores))
    return devices


def decode_pod_single_device(value: str) -> PodSingleDevice:
    """Container slots from a pod device encoding. Empty slots are kept so slot i stays container i; the
    trailing `;` therefore yields one extra empty slot, and "" yields a single empty slot (as in HAMi)."""
    return [_decode_container_devices(slot) for slot in value.split(";")]


def decode_pod_devices(
    annotations: Mapping[str, str], key: str, device_type: str = wire.NVIDIA
) -> PodDevices:
    """PodDevices from the pod annotation `key` (e.g. `hami.io/vgpu-devices-allocated`); absent key -> {}."""
    if key not in annotations:
        return {}
    return {device_type: decode_pod_single_device(annotations[key])}


def encode_pod_devices(pod_devices: PodDevices, key: str, device_type: str = wire.NVIDIA) -> dict[str, str]:
    """The annotation for `device_type`'s slots under `key`, or {} when the pod has none of that type."""
    if device_type not in pod_devices:
        return {}
    return {key: encode_pod_single_device(pod_devices[device_type])}


def parse_mig_template_uuid(uuid: str) -> tuple[int, int]:
    """(template index, slot index) from a legacy template-MIG UUID `GPU-<uuid>[<t>-<s>]` (v2.5-v2.9)."""
    left = uuid.find("[")
    right = uuid.find("]")
    if left < 0 or right <= left:
        raise WireFormatError(f"legacy MIG UUID {uuid!r} has no '[<template>-<slot>]' suffix")
    parts = uuid[left + 1 : right].split("-")
    if len(parts) != 2:
        raise WireFormatError(
            f"legacy MIG UUID {uuid!r}: want '[<template>-<slot>]', got {uuid[left : right + 1]!r}"
        )
    template = _parse_go_int(parts[0], _INT64_MIN, _INT64_MAX)
    slot = _parse_go_int(parts[1], _INT64_MIN, _INT64_MAX)
    if template is None or slot is None:
        raise WireFormatError(f"legacy MIG UUID {uuid!r}: template and slot must be integers")
    return template, slot


# --- Collapsing a pod's devices (docs/hami-wire.md#node-usage) ----------------------------------------------


@dataclass(slots=True)
class _Tally:
    init_mem: int = 0
    init_cores: int = 0
    init_used: bool = False
    app_mem: int = 0
    app_cores: int = 0
    app_slots: int = 0


def _tally(
    pod_single_device: Sequence[Sequence[ContainerDevice]], init_count: int
) -> dict[tuple[str, str], _Tally]:
    tallies: dict[tuple[str, str], _Tally] = {}
    for slot_index, slot in enumerate(pod_single_device):
        for device in slot:
            tally = tallies.setdefault((device.uuid, device.type), _Tally())
            if slot_index < init_count:
                # Init containers run one after another: only the largest single use counts.
                tally.init_mem = max(tally.init_mem, device.usedmem)
                tally.init_cores = max(tally.init_cores, device.usedcores)
                tally.init_used = True
            else:
                # App containers run side by side: their uses add up, one task slot each.
                tally.app_mem += device.usedmem
                tally.app_cores += device.usedcores
                tally.app_slots += 1
    return tallies


def collapse_pod_devices(
    pod_single_device: Sequence[Sequence[ContainerDevice]], init_count: int
) -> list[CollapsedDevice]:
    """A pod's effective per-GPU usage (HAMi `CollapseInitContainerUsage`), sorted by UUID.

    Slots `[0, init_count)` are init containers. Per GPU: mem = max(largest init use, sum of app uses), cores
    likewise, slots = max(1 if an init container used it, app occurrences, 1).
    """
    return [
        CollapsedDevice(
            uuid=uuid,
            type=device_type,
            usedmem=max(t.init_mem, t.app_mem),
            usedcores=max(t.init_cores, t.app_cores),
            slots=max(1 if t.init_used else 0, t.app_slots, 1),
        )
        for (uuid, device_type), t in sorted(_tally(pod_single_device, init_count).items())
    ]


def collapse_app_devices(
    pod_single_device: Sequence[Sequence[ContainerDevice]], init_count: int
) -> list[CollapsedDevice]:
    """Usage once every init container has exited (docs/hami-wire.md#caches): app containers only, sums per
    GPU, one slot per occurrence, sorted by UUID. GPUs used only by init containers drop out."""
    return [
        CollapsedDevice(uuid, device_type, t.app_mem, t.app_cores, t.app_slots)
        for (uuid, device_type), t in sorted(_tally(pod_single_device, init_count).items())
        if t.app_slots
    ]


# --- Node lock (docs/hami-wire.md#node-lock) ----------------------------------------------------------------

_RFC3339_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _format_rfc3339(moment: datetime) -> str:
    # Go's time.RFC3339 layout: a four-digit year, whole seconds, and "Z" for UTC (we always write UTC).
    # Formatted by hand because strftime("%Y") does not zero-pad years before 1000 on every platform.
    t = moment.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def _parse_rfc3339(text: str, whole: str) -> datetime:
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise WireFormatError(
            f"malformed lock annotation {whole!r}: time {text!r} is not RFC3339 (e.g. 2026-08-21T10:15:04Z)"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        if zone == "Z":
            tz = UTC
        else:
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            tz = timezone(-offset if zone[0] == "-" else offset)
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError as err:
        raise WireFormatError(
            f"malformed lock annotation {whole!r}: time {text!r} is out of range ({err})"
        ) from None
    return moment.astimezone(UTC)


def encode_node_lock(lock: NodeLock) -> str:
    """`<RFC3339 UTC>,<namespace>,<name>`, or the bare timestamp for a legacy (ownerless) lock."""
    stamp = _format_rfc3339(lock.acquired_at)
    if lock.namespace is None or lock.name is None:
        return stamp
    for part in (lock.namespace, lock.name):
        if "," in part:
            raise WireFormatError(f"node lock owner {part!r} must not contain ','")
    return f"{stamp},{lock.namespace},{lock.name}"


def parse_node_lock(value: str) -> NodeLock:
    """The `hami.io/mutex.lock` value: `ts,ns,name` or the legacy bare `ts`; any other shape is malformed."""
    parts = value.split(",")
    if len(parts) == 3:
        return NodeLock(_parse_rfc3339(parts[0], value), parts[1], parts[2])
    if len(parts) == 1:
        return NodeLock(_parse_rfc3339(parts[0], value))
    raise WireFormatError(
        f"malformed lock annotation {value!r}: want '<RFC3339 time>,<namespace>,<name>' or a bare time"
    )


# --- Fit failure reasons (docs/hami-wire.md#fit-reasons) ----------------------------------------------------

_REASON_ENTRY_RE: Final = re.compile(r"([0-9]+)/([0-9]+) +(\S.*)")


def format_reasons(counts: Mapping[str, int], total: int) -> str:
    """`"<count>/<total> <Reason>"` entries sorted lexicographically and joined by ", " (HAMi `GenReason`).

    Reasons with a non-positive count never happened and are left out.
    """
    return ", ".join(sorted(f"{count}/{total} {reason}" for reason, count in counts.items() if count > 0))


def parse_reasons(value: str) -> dict[str, int]:
    """Reason -> count from a `format_reasons` string. Like HAMi's `ParseReason`, entries that are not of the
    counted form (e.g. the plain "node unregistered") are skipped; a repeated reason keeps its last count."""
    reasons: dict[str, int] = {}
    for entry in value.split(","):
        match = _REASON_ENTRY_RE.fullmatch(entry.strip())
        if match is not None:
            reasons[match.group(3).strip()] = int(match.group(1))
    return reasons


# --- Pod annotation values ----------------------------------------------------------------------------------

_WEIGHT_KEYS: Final = ("slot", "core", "memory")


def parse_device_scoring_weights(value: str) -> DeviceScoringWeights:
    """`slot=<int>,core=<int>,memory=<int>` (pod annotation `hami.io/device-scoring-weights`): exactly the
    three keys, each once, non-negative integers, at least one above zero."""
    weights: dict[str, int] = {}
    for entry in value.split(","):
        key, sep, raw = entry.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep:
            raise WireFormatError(f"device scoring weights {value!r}: entry {entry!r} is not key=value")
        if key not in _WEIGHT_KEYS:
            raise WireFormatError(
                f"device scoring weights {value!r}: unknown key {key!r} (want slot, core and memory)"
            )
        if key in weights:
            raise WireFormatError(f"device scoring weights {value!r}: duplicate key {key!r}")
        number = _parse_go_int(raw, _INT64_MIN, _INT64_MAX)
        if number is None:
            raise WireFormatError(f"device scoring weights {value!r}: {key} value {raw!r} is not an integer")
        if number < 0:
            raise WireFormatError(f"device scoring weights {value!r}: {key} value {number} is negative")
        weights[key] = number
    missing = [key for key in _WEIGHT_KEYS if key not in weights]
    if missing:
        raise WireFormatError(f"device scoring weights {value!r}: missing key(s) {', '.join(missing)}")
    if not any(weights.values()):
        raise WireFormatError(
            f"device scoring weights {value!r}: all weights are zero; at least one must be > 0"
        )
    return DeviceScoringWeights(slot=weights["slot"], core=weights["core"], memory=weights["memory"])


def _comma_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [item for item in (raw.strip() for raw in value.split(",")) if item]


def parse_cordon(value: str | None) -> frozenset[str]:
    """GPU UUIDs in the node annotation `hami.io/device-cordon` (whitespace and empty entries ignored)."""
    return frozenset(_comma_list(value))


def parse_uuid_list(value: str | None) -> frozenset[str]:
    """UUIDs of `nvidia.com/use-gpuuuid` / `nouse-gpuuuid`. Entries are trimmed and empty ones dropped, so an
    empty value means "no constraint" rather than "matches nothing"."""
    return frozenset(_comma_list(value))


def parse_type_list(value: str | None) -> tuple[str, ...]:
    """Upper-cased type fragments of `nvidia.com/use-gputype` / `nouse-gputype`, matched as substrings of the
    upper-cased card type. Empty entries are dropped: an empty fragment would match every card."""
    return tuple(dict.fromkeys(item.upper() for item in _comma_list(value)))


_TRUE_STRINGS: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_STRINGS: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool: 1, t, T, TRUE, true, True / 0, f, F, FALSE, false, False; else an error."""
    if value in _TRUE_STRINGS:
        return True
    if value in _FALSE_STRINGS:
        return False
    raise WireFormatError(f"{value!r} is not a boolean (want one of 1, t, T, TRUE, true, True, 0, f, F, ...)")
