"""Kubernetes protobuf <-> the JSON dicts kube-local stores (docs/kubelocal-differences.md#protobuf).

The conversion walks the message descriptors of the pinned release: a protobuf field's name is its JSON
key, and the Go struct tags recorded beside the descriptors (``schema.py``) say what Go's JSON encoding
would show, so a protobuf request decodes to exactly the dict a Go client sending JSON would have sent:

* a pointer field is present exactly when set (``gracePeriodSeconds: 0`` stays);
* a non-pointer scalar is left out when zero and ``omitempty``, a struct is always shown (Go's
  ``omitempty`` never hides a struct) unless ``omitzero`` and zero, a nil slice or map without
  ``omitempty`` is ``null``;
* an embedded struct Go's JSON inlines (``Probe.handler``, ``Volume.volumeSource``) is flattened;
* the special apimachinery types (``special.py``) convert by hand.

Objects travel in the envelope every Kubernetes protobuf body has: the 4 bytes ``k8s\\x00`` and a
``runtime.Unknown`` holding ``typeMeta`` (apiVersion, kind, which the object's own message lacks) and
``raw``, the object's message. A watch stream (``;stream=watch``) is a sequence of frames, each a 4-byte
big-endian length and a ``meta/v1 WatchEvent`` whose ``object.raw`` is the object's envelope.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from sim.kubelocal.pb.schema import META_V1, RUNTIME, JsonField, Schema, schema
from sim.kubelocal.pb.special import SPECIAL, CodecError, special_from_json, special_is_zero, special_to_json

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"
PROTOBUF_WATCH = f"{PROTOBUF};stream=watch"

_INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_INT32_CPP_TYPES = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32})
_UNSIGNED_CPP_TYPES = frozenset({FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64})
# A field's descriptor: the stubs type the upb and the pure-Python descriptors apart, the code uses both.
Field = Any


class UnknownKind(CodecError):
    """The schema has no message for an envelope's or a JSON object's apiVersion/kind."""


# --- protobuf -> JSON ------------------------------------------------------------------------------


def _json_field(sch: Schema, message: str, fd: Field) -> JsonField:
    found = sch.fields.get(message, {}).get(fd.name)
    if found is None:  # a field the Go tags do not describe (none in the served packages): omitempty
        return JsonField(fd.name, True, False, False, False)
    return found


def _scalar_to_json(fd: Field, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _is_zero(msg: Message) -> bool:
    """Go's zero value test for a struct (``omitzero``): every field zero."""
    if msg.DESCRIPTOR.full_name in SPECIAL:
        return special_is_zero(msg)
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            if len(value):
                return False
        elif fd.message_type is not None:
            if not _is_zero(value):
                return False
        elif value != fd.default_value:
            return False
    return True


def message_to_json(msg: Message, sch: Schema | None = None) -> Any:
    """The Kubernetes JSON of ``msg`` (a dict for an ordinary message)."""
    sch = sch or schema()
    desc: Any = msg.DESCRIPTOR
    if desc.full_name in SPECIAL:
        return special_to_json(msg, lambda raw: decode_object(raw, sch))
    if desc.full_name in sch.slices:
        wrapper: Any = msg
        return [_element_to_json(desc.fields_by_name["items"], v, sch) for v in wrapper.items]
    out: dict[str, Any] = {}
    for fd in desc.fields:
        shape = _json_field(sch, desc.full_name, fd)
        key = shape.name or fd.name
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            if len(value) == 0:
                if not shape.omitempty:
                    out[key] = None  # a nil slice or map without omitempty
                continue
            if _is_map(fd):
                value_fd = fd.message_type.fields_by_name["value"]
                out[key] = {k: _element_to_json(value_fd, v, sch) for k, v in value.items()}
            else:
                out[key] = [_element_to_json(fd, v, sch) for v in value]
            continue
        if fd.message_type is not None:
            present = msg.HasField(fd.name)
            if shape.inline:
                inlined = message_to_json(value, sch)
                if isinstance(inlined, dict):
                    out.update(inlined)
                continue
            if shape.pointer and not present:
                continue
            if shape.omitzero and not shape.pointer and _is_zero(value):
                continue
            out[key] = message_to_json(value, sch)
            continue
        if shape.pointer:
            if msg.HasField(fd.name):
                out[key] = _scalar_to_json(fd, value)
            continue
        if shape.omitempty and value == fd.default_value:
            continue
        out[key] = _scalar_to_json(fd, value)
    return out


def _is_map(fd: Field) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _element_to_json(fd: Field, value: Any, sch: Schema) -> Any:
    if fd.message_type is not None:
        return message_to_json(value, sch)
    return _scalar_to_json(fd, value)


# --- JSON -> protobuf ------------------------------------------------------------------------------


def _scalar_from_json(fd: Field, value: Any, path: str) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise CodecError(f"{path}: expected a string, got {value!r}")
        return value
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise CodecError(f"{path}: expected true or false, got {value!r}")
        return value
    if fd.type in _INT_TYPES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{path}: expected an integer, got {value!r}")
        bits = 32 if fd.cpp_type in _INT32_CPP_TYPES else 64
        unsigned = fd.cpp_type in _UNSIGNED_CPP_TYPES
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not low <= value <= high:
            raise CodecError(f"{path}: {value} is out of range for {'u' if unsigned else ''}int{bits}")
        return value
    if fd.type in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise CodecError(f"{path}: expected a base64 string, got {value!r}")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise CodecError(f"{path}: not valid base64: {exc}") from exc
    raise CodecError(f"{path}: unsupported protobuf field type {fd.type}")


def fill_message(msg: Message, value: Any, path: str, sch: Schema | None = None) -> None:
    """Set ``msg``'s fields from the Kubernetes JSON ``value``; keys the type lacks are dropped, as Go's
    JSON decoding drops them (``kind``/``apiVersion`` travel in the envelope)."""
    sch = sch or schema()
    desc: Any = msg.DESCRIPTOR
    if desc.full_name in SPECIAL:
        special_from_json(msg, value, path)
        return
    if desc.full_name in sch.slices:
        if not isinstance(value, list):
            raise CodecError(f"{path}: expected a list, got {value!r}")
        wrapper: Any = msg
        _fill_repeated(wrapper.items, desc.fields_by_name["items"], value, path, sch)
        return
    if not isinstance(value, dict):
        raise CodecError(f"{path}: expected an object, got {value!r}")
    for fd in desc.fields:
        shape = _json_field(sch, desc.full_name, fd)
        if shape.inline:
            sub = getattr(msg, fd.name)
            fill_message(sub, value, path, sch)
            sub.SetInParent()
            continue
        key = shape.name or fd.name
        item = value.get(key)
        if item is None:
            continue
        where = f"{path}.{key}" if path else key
        if fd.is_repeated:
            if _is_map(fd):
                if not isinstance(item, dict):
                    raise CodecError(f"{where}: expected an object, got {item!r}")
                _fill_map(getattr(msg, fd.name), fd, item, where, sch)
            else:
                if not isinstance(item, list):
                    raise CodecError(f"{where}: expected a list, got {item!r}")
                _fill_repeated(getattr(msg, fd.name), fd, item, where, sch)
        elif fd.message_type is not None:
            sub = getattr(msg, fd.name)
            fill_message(sub, item, where, sch)
            sub.SetInParent()
        else:
            setattr(msg, fd.name, _scalar_from_json(fd, item, where))


def _fill_repeated(target: Any, fd: Field, items: list[Any], path: str, sch: Schema) -> None:
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if fd.message_type is not None:
            fill_message(target.add(), item, where, sch)
        elif item is not None:
            target.append(_scalar_from_json(fd, item, where))


def _fill_map(target: Any, fd: Field, items: dict[str, Any], path: str, sch: Schema) -> None:
    value_fd = fd.message_type.fields_by_name["value"]
    for key, item in items.items():
        where = f"{path}[{key}]"
        if value_fd.message_type is not None:
            fill_message(target[key], item, where, sch)
        elif item is not None:
            target[key] = _scalar_from_json(value_fd, item, where)


# --- objects in the envelope -----------------------------------------------------------------------


def _envelope_class(sch: Schema) -> tuple[type[Message], Descriptor]:
    desc = sch.descriptor(f"{RUNTIME}.Unknown")
    assert desc is not None, "runtime.Unknown is missing from the generated schema"
    return sch.message_class(desc), desc


def object_descriptor(obj: Any, sch: Schema | None = None) -> Descriptor | None:
    """The message of a JSON object by its apiVersion/kind; None for an object the schema lacks."""
    sch = sch or schema()
    if not isinstance(obj, dict):
        return None
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    return sch.kind_descriptor(api_version, kind)


def encode_object(obj: Any, sch: Schema | None = None) -> bytes:
    """The protobuf body (envelope included) of a JSON object; UnknownKind when the schema lacks its type."""
    sch = sch or schema()
    desc = object_descriptor(obj, sch)
    if desc is None:
        kind = obj.get("kind") if isinstance(obj, dict) else None
        version = obj.get("apiVersion") if isinstance(obj, dict) else None
        raise UnknownKind(f"no protobuf message for kind {kind!r} of apiVersion {version!r}")
    msg = sch.message_class(desc)()
    fill_message(msg, obj, "", sch)
    envelope_class, _ = _envelope_class(sch)
    envelope: Any = envelope_class()
    envelope.typeMeta.apiVersion = obj["apiVersion"]
    envelope.typeMeta.kind = obj["kind"]
    envelope.raw = msg.SerializeToString()
    envelope.contentEncoding = ""
    envelope.contentType = ""
    return MAGIC + bytes(envelope.SerializeToString())


def decode_object(data: bytes, sch: Schema | None = None) -> dict[str, Any]:
    """The JSON object of a protobuf body (envelope included), with its kind and apiVersion."""
    sch = sch or schema()
    if not data.startswith(MAGIC):
        raise CodecError("the body does not start with the Kubernetes protobuf prefix k8s\\x00")
    envelope_class, _ = _envelope_class(sch)
    envelope: Any = envelope_class()
    try:
        envelope.ParseFromString(data[len(MAGIC) :])
    except DecodeError as exc:
        raise CodecError(f"the protobuf envelope (runtime.Unknown) is malformed: {exc}") from exc
    if envelope.contentEncoding:
        raise CodecError(f"unsupported contentEncoding {envelope.contentEncoding!r} in the protobuf envelope")
    api_version, kind = envelope.typeMeta.apiVersion, envelope.typeMeta.kind
    desc = sch.kind_descriptor(api_version, kind)
    if desc is None:
        raise UnknownKind(f"no protobuf message for kind {kind!r} of apiVersion {api_version!r}")
    msg = sch.message_class(desc)()
    try:
        msg.ParseFromString(envelope.raw)
    except DecodeError as exc:
        raise CodecError(f"the {kind} message is malformed: {exc}") from exc
    body = message_to_json(msg, sch)
    return {"kind": kind, "apiVersion": api_version, **body}


# --- watch streams ---------------------------------------------------------------------------------


def encode_watch_frame(event: dict[str, Any], sch: Schema | None = None) -> bytes:
    """One frame of a ``;stream=watch`` body: length, then the WatchEvent with the object's envelope."""
    sch = sch or schema()
    desc = sch.descriptor(f"{META_V1}.WatchEvent")
    assert desc is not None, "meta/v1 WatchEvent is missing from the generated schema"
    msg: Any = sch.message_class(desc)()
    msg.type = event["type"]
    msg.object.raw = encode_object(event["object"], sch)
    payload = bytes(msg.SerializeToString())
    return struct.pack(">I", len(payload)) + payload


def decode_watch_frames(data: bytes, sch: Schema | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """The events of the complete frames at the start of ``data``, and the bytes left over."""
    sch = sch or schema()
    desc = sch.descriptor(f"{META_V1}.WatchEvent")
    assert desc is not None, "meta/v1 WatchEvent is missing from the generated schema"
    events: list[dict[str, Any]] = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + length:
            break
        msg: Any = sch.message_class(desc)()
        msg.ParseFromString(data[4 : 4 + length])
        events.append({"type": msg.type, "object": decode_object(msg.object.raw, sch)})
        data = data[4 + length :]
    return events, data


def json_line_to_frame(line: bytes, sch: Schema | None = None) -> bytes:
    """A JSON watch line of kube-local's store as a protobuf frame."""
    return encode_watch_frame(json.loads(line), sch)
