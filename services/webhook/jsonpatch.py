"""RFC 6902 JSON patch as the difference between two JSON documents (pure).

The webhook mutates a copy of the pod and answers with ``diff(original, mutated)``, the way
controller-runtime's ``PatchResponseFromRaw`` does, but without its noise: only what changed is in the patch.

Objects are compared key by key (``add`` / ``remove`` / ``replace``); arrays of equal length element by
element; an array that only grew at its end gets one ``add`` per new element; any other array change
replaces the whole array. Scalars differ when their JSON differs: ``1``, ``1.0`` and ``true`` are three
different values here, as they are on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["JsonPatchOp", "diff", "escape_token", "json_equal", "pointer"]

JsonPatchOp = dict[str, Any]


def escape_token(token: str) -> str:
    """One JSON pointer reference token (RFC 6901): `~` -> `~0`, `/` -> `~1` (`nvidia.com~1gpu`)."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(tokens: Sequence[str | int]) -> str:
    return "".join("/" + escape_token(str(token)) for token in tokens)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values with JSON's types: a boolean is not a number, an integer is not a float."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff(original: Any, mutated: Any) -> list[JsonPatchOp]:
    """Operations that turn ``original`` into ``mutated`` when applied in order."""
    ops: list[JsonPatchOp] = []
    _diff(original, mutated, [], ops)
    return ops


def _diff(a: Any, b: Any, path: list[str | int], ops: list[JsonPatchOp]) -> None:
    if json_equal(a, b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                ops.append({"op": "remove", "path": pointer([*path, key])})
        for key, value in b.items():
            if key in a:
                _diff(a[key], value, [*path, key], ops)
            else:
                ops.append({"op": "add", "path": pointer([*path, key]), "value": value})
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                _diff(x, y, [*path, index], ops)
            return
        if len(b) > len(a) and json_equal(a, b[: len(a)]):
            for index in range(len(a), len(b)):
                ops.append({"op": "add", "path": pointer([*path, index]), "value": b[index]})
            return
    ops.append({"op": "replace", "path": pointer(path), "value": b})
