"""Content negotiation for ``application/vnd.kubernetes.protobuf`` (docs/kubelocal-differences.md#protobuf).

kube-local's handlers speak JSON. A protobuf request body is decoded to the JSON dict a JSON client would
have sent (:func:`decode_protobuf_body`, called by ``wire.decode_body``); a response goes out as protobuf
when the request's ``Accept`` prefers it (:func:`protobuf_middleware` re-encodes the JSON answer, Status
errors included; :func:`watch_encoding` frames a watch stream). Types the schema lacks stay JSON, as the
real server answers JSON for a type without protobuf support when ``Accept`` also allows JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.accept import media_ranges
from sim.kubelocal.pb.codec import (
    PROTOBUF,
    PROTOBUF_WATCH,
    decode_object,
    encode_object,
    json_line_to_frame,
    object_descriptor,
)
from sim.kubelocal.pb.special import CodecError

JSON = "application/json"
#: The request body media types kube-local decodes (named in a 415 answer).
REQUEST_MEDIA_TYPES = (JSON, PROTOBUF)


def is_protobuf(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == PROTOBUF


def prefers_protobuf(request: web.BaseRequest) -> bool:
    """Whether the first media range kube-local can answer in is plain protobuf (``as=`` conversions such
    as Table are JSON in kube-local, so a protobuf range asking for one is passed over)."""
    for media, params in media_ranges(request.headers.get("Accept", "")):
        if media == PROTOBUF:
            if "as" in params:
                continue
            return True
        if media in (JSON, "*/*", "application/*"):
            return False
    return False


def decode_protobuf_body(raw: bytes) -> Any:
    """The JSON form of a protobuf request body (400 when it is not a Kubernetes protobuf object)."""
    try:
        return decode_object(raw)
    except CodecError as exc:
        raise errors.bad_request(f"the protobuf request body could not be decoded: {exc}") from exc


@web.middleware
async def protobuf_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Re-encodes a JSON answer as protobuf for a client whose Accept prefers it. Sits outside the errors
    middleware, so Status errors are encoded too."""
    response = await handler(request)
    if (
        not isinstance(response, web.Response)
        or response.content_type != JSON
        or not isinstance(response.body, bytes)
        or not prefers_protobuf(request)
    ):
        return response
    body = json.loads(response.body)
    if object_descriptor(body) is None:
        return response
    try:
        encoded = encode_object(body)
    except CodecError as exc:
        # A stored value that does not fit its protobuf field: say which, as a Status the client reads.
        failure = errors.internal(f"the {body.get('kind')} cannot be encoded as protobuf: {exc}")
        encoded, status = encode_object(failure.status()), failure.code
    else:
        status = response.status
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return web.Response(body=encoded, status=status, headers=headers, content_type=PROTOBUF)


@dataclass(frozen=True)
class WatchEncoding:
    """How a watch stream's events go out: kube-local's JSON lines as they are, or protobuf frames."""

    content_type: str
    frame: Callable[[bytes], bytes]


def _json_line(line: bytes) -> bytes:
    return line


def watch_encoding(request: web.BaseRequest) -> WatchEncoding:
    if prefers_protobuf(request):
        return WatchEncoding(PROTOBUF_WATCH, json_line_to_frame)
    return WatchEncoding(JSON, _json_line)
