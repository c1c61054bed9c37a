"""The apimachinery types whose Kubernetes JSON is not their protobuf message's shape: each has a Go
``MarshalJSON``, and kube-local converts them by hand (docs/kubelocal-differences.md#protobuf).

=====================  ==============================  =========================================
message                protobuf                        JSON
=====================  ==============================  =========================================
meta/v1 Time           seconds, nanos                  RFC 3339 in UTC, whole seconds; zero: null
meta/v1 MicroTime      seconds, nanos                  RFC 3339 in UTC, microseconds; zero: null
meta/v1 Duration       duration (nanoseconds)          Go duration string ("1m30s")
meta/v1 FieldsV1       Raw (JSON bytes)                the JSON object itself
resource Quantity      string                          the string ("500m", "4Gi")
intstr IntOrString     type, intVal, strVal            a number or a string
runtime RawExtension   raw (JSON or an envelope)       the embedded object
=====================  ==============================  =========================================
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

META = "k8s.io.apimachinery.pkg.apis.meta.v1"
TIME = f"{META}.Time"
MICRO_TIME = f"{META}.MicroTime"
DURATION = f"{META}.Duration"
FIELDS_V1 = f"{META}.FieldsV1"
QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
RAW_EXTENSION = "k8s.io.apimachinery.pkg.runtime.RawExtension"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


class CodecError(ValueError):
    """A value that does not fit its field; the message names the field path."""


def _time_text(seconds: int, nanos: int, micro: bool) -> str | None:
    if seconds == 0 and nanos == 0:
        return None  # Go's zero time marshals as null
    moment = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, path: str) -> tuple[int, int]:
    """(seconds, nanos) of an RFC 3339 timestamp."""
    if not isinstance(text, str):
        raise CodecError(f"{path}: expected an RFC 3339 timestamp string, got {text!r}")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CodecError(f"{path}: {text!r} is not an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        raise CodecError(f"{path}: {text!r} has no time zone (RFC 3339 needs one)")
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def format_duration(ns: int) -> str:
    """Go's ``time.Duration.String``."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)

    def fraction(value: int, digits: int) -> str:
        whole, rest = divmod(value, 10**digits)
        tail = f"{rest:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{fraction(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{fraction(u, 6)}ms"
    seconds, nanos = divmod(u, 1_000_000_000)
    text = f"{fraction((seconds % 60) * 1_000_000_000 + nanos, 9)}s"
    minutes = seconds // 60
    if minutes:
        hours = minutes // 60
        text = f"{minutes % 60}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def parse_duration(text: Any, path: str) -> int:
    """Nanoseconds of a Go duration string (``time.ParseDuration``)."""
    if not isinstance(text, str) or not text:
        raise CodecError(f'{path}: expected a duration string like "1m30s", got {text!r}')
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body == "0":
        return 0
    total, pos = 0.0, 0
    for match in _DURATION_PART_RE.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise CodecError(f'{path}: {text!r} is not a duration (e.g. "1m30s", "500ms")')
    return sign * round(total)


# --- protobuf -> JSON ------------------------------------------------------------------------------


def _raw_to_json(raw: bytes, decode_envelope: Callable[[bytes], Any]) -> Any:
    if not raw:
        return None
    if raw.startswith(b"k8s\x00"):
        return decode_envelope(raw)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError("a RawExtension holds neither JSON nor a protobuf object") from exc


def special_to_json(msg: Message, decode_envelope: Callable[[bytes], Any]) -> Any:
    """The JSON of a special message (the caller checked ``msg.DESCRIPTOR.full_name in SPECIAL``)."""
    name = msg.DESCRIPTOR.full_name
    m: Any = msg
    if name == TIME:
        return _time_text(m.seconds, m.nanos, micro=False)
    if name == MICRO_TIME:
        return _time_text(m.seconds, m.nanos, micro=True)
    if name == DURATION:
        return format_duration(m.duration)
    if name == FIELDS_V1:
        return _raw_to_json(m.Raw, decode_envelope)
    if name == QUANTITY:
        return m.string or "0"
    if name == INT_OR_STRING:
        return m.strVal if m.type == 1 else m.intVal
    return _raw_to_json(m.raw, decode_envelope)  # RAW_EXTENSION


def special_is_zero(msg: Message) -> bool:
    """Go's ``IsZero`` (what ``omitzero`` asks) of a special message."""
    m: Any = msg
    name = msg.DESCRIPTOR.full_name
    if name in (TIME, MICRO_TIME):
        return bool(m.seconds == 0 and m.nanos == 0)
    if name == DURATION:
        return bool(m.duration == 0)
    if name == FIELDS_V1:
        return not m.Raw
    if name == QUANTITY:
        return m.string in ("", "0")
    if name == INT_OR_STRING:
        return bool(m.type == 0 and m.intVal == 0)
    return not m.raw


# --- JSON -> protobuf ------------------------------------------------------------------------------


def special_from_json(msg: Message, value: Any, path: str) -> None:
    """Fill a special message from its JSON ``value`` (not None)."""
    name = msg.DESCRIPTOR.full_name
    m: Any = msg
    if name in (TIME, MICRO_TIME):
        m.seconds, nanos = parse_time(value, path)
        m.nanos = 0 if name == TIME else nanos
    elif name == DURATION:
        m.duration = parse_duration(value, path)
    elif name == FIELDS_V1:
        m.Raw = json.dumps(value, separators=(",", ":")).encode()
    elif name == QUANTITY:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise CodecError(f'{path}: expected a quantity ("500m", "4Gi", 2), got {value!r}')
        m.string = value if isinstance(value, str) else repr(value)
    elif name == INT_OR_STRING:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise CodecError(f"{path}: expected an integer or a string, got {value!r}")
        if isinstance(value, int):
            m.type, m.intVal = 0, value
        else:
            m.type, m.strVal = 1, value
    else:  # RAW_EXTENSION: JSON bytes, as Go keeps a RawExtension it decoded from JSON
        m.raw = json.dumps(value, separators=(",", ":")).encode()


SPECIAL = frozenset({TIME, MICRO_TIME, DURATION, FIELDS_V1, QUANTITY, INT_OR_STRING, RAW_EXTENSION})
