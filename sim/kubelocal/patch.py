"""The three PATCH flavours the apiserver accepts for built-in types. Pure functions, no I/O.

* :func:`merge_patch` - JSON merge patch, RFC 7386 (``application/merge-patch+json``).
* :func:`strategic_merge_patch` - the subset of Kubernetes strategic merge patch that matters for
  the resources kube-local serves (``application/strategic-merge-patch+json``): maps merge
  recursively and ``null`` deletes a key, like a merge patch; lists named in
  :data:`MERGE_KEYS` (``containers`` by ``name``, ``conditions`` by ``type``, ...) merge element
  by element on their merge key, :data:`SET_LISTS` (``finalizers``) merge as sets, every other
  list is replaced. Directives: ``$patch: replace|delete|merge`` on maps and list elements,
  ``$deleteFromPrimitiveList/<field>``, ``$retainKeys``; ``$setElementOrder/<field>`` is
  accepted and ignored. The merge-key table goes by field name, not by full schema path.
* :func:`json_patch` - JSON patch, RFC 6902 (``application/json-patch+json``) with RFC 6901
  pointers (``~0``/``~1`` escapes).

None of them mutates its arguments. Malformed patches raise :class:`InvalidPatch` (the apiserver
answers 400); a well-formed patch that cannot apply (a failed ``test``, a missing path) raises
:class:`PatchConflict` (the apiserver answers 422).
"""

from __future__ import annotations

import copy
from typing import Any

JSONValue = Any

#: Strategic-merge list fields merged element-wise, keyed by the element field named here.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "conditions": "type",
    "addresses": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "podIPs": "ip",
    "topologySpreadConstraints": "topologyKey",
}

#: Strategic-merge lists of scalars merged as ordered sets.
SET_LISTS: frozenset[str] = frozenset({"finalizers", "podCIDRs"})

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


class PatchError(ValueError):
    """Base class of patch failures."""


class InvalidPatch(PatchError):
    """The patch document itself is malformed (HTTP 400)."""


class PatchConflict(PatchError):
    """A well-formed patch that does not apply to this document (HTTP 422)."""


class PatchTestFailed(PatchConflict):
    """A JSON patch ``test`` operation found a different value."""


# --- RFC 7386 merge patch ------------------------------------------------------------------------


def merge_patch(target: JSONValue, patch: JSONValue) -> JSONValue:
    """Applies an RFC 7386 merge patch and returns the result (inputs untouched)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch -----------------------------------------------------------------------


def strategic_merge_patch(target: JSONValue, patch: JSONValue) -> JSONValue:
    """Applies the supported subset of a Kubernetes strategic merge patch (inputs untouched)."""
    if not isinstance(patch, dict):
        raise InvalidPatch("a strategic merge patch must be a JSON object")
    result = _smp_map(target if isinstance(target, dict) else {}, patch)
    return {} if result is None else result


def _strip_directives(value: JSONValue) -> JSONValue:
    """A patch value that lands where nothing is merged: drop directive keys recursively."""
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if k not in (_DIRECTIVE, _RETAIN_KEYS)
            and not k.startswith(_DELETE_PRIMITIVE)
            and not k.startswith(_SET_ORDER)
            and v is not None
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _smp_map(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    directive = patch.get(_DIRECTIVE)
    if directive is not None:
        if directive == "delete":
            return None
        if directive == "replace":
            return dict(_strip_directives(patch))
        if directive != "merge":
            raise InvalidPatch(f"unknown patch directive {directive!r} in map")
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key in (_DIRECTIVE, _RETAIN_KEYS) or key.startswith(_SET_ORDER):
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE) :]
            if not isinstance(value, list):
                raise InvalidPatch(f"{key} must be a list")
            current = result.get(field)
            if isinstance(current, list):
                result[field] = [item for item in current if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            merged = _smp_map(current if isinstance(current, dict) else {}, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = value
    retain = patch.get(_RETAIN_KEYS)
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise InvalidPatch(f"{_RETAIN_KEYS} must be a list of strings")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(field: str, original: JSONValue, patch: list[Any]) -> list[Any]:
    merge_key = MERGE_KEYS.get(field)
    if merge_key is not None:
        # A `{"$patch": "replace"}` element replaces the whole list with the other elements.
        if any(isinstance(e, dict) and e.get(_DIRECTIVE) == "replace" for e in patch):
            return [
                _strip_directives(e)
                for e in patch
                if not (isinstance(e, dict) and e.get(_DIRECTIVE) == "replace")
            ]
        return _merge_by_key(field, merge_key, original if isinstance(original, list) else [], patch)
    if field in SET_LISTS:
        merged = list(original) if isinstance(original, list) else []
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    return [_strip_directives(e) for e in patch]


def _merge_by_key(field: str, key: str, original: list[Any], patch: list[Any]) -> list[Any]:
    result = copy.deepcopy(original)
    for element in patch:
        if not isinstance(element, dict) or key not in element:
            raise InvalidPatch(f"{field}: element {element!r} does not contain declared merge key: {key}")
        wanted = element[key]
        index = next(
            (i for i, e in enumerate(result) if isinstance(e, dict) and e.get(key) == wanted),
            None,
        )
        if element.get(_DIRECTIVE) == "delete":
            result = [e for e in result if not (isinstance(e, dict) and e.get(key) == wanted)]
            continue
        if index is None:
            result.append(_strip_directives(element))
        else:
            merged = _smp_map(result[index], element)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    return result


# --- RFC 6902 JSON patch -------------------------------------------------------------------------


def parse_pointer(pointer: str) -> list[str]:
    """Splits an RFC 6901 JSON pointer into unescaped reference tokens."""
    if not isinstance(pointer, str):
        raise InvalidPatch(f"JSON pointer must be a string, got {pointer!r}")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise InvalidPatch(f"JSON pointer {pointer!r} must be empty or start with '/'")
    tokens = []
    for raw in pointer[1:].split("/"):
        i = 0
        while (i := raw.find("~", i)) != -1:
            if raw[i + 1 : i + 2] not in ("0", "1"):
                raise InvalidPatch(f"JSON pointer {pointer!r} has an invalid '~' escape")
            i += 2
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def _json_equal(a: JSONValue, b: JSONValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _array_index(token: str, length: int, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchConflict(f"invalid array index {token!r} in path {pointer!r}")
    index = int(token)
    limit = length if allow_end else length - 1
    if index > limit:
        raise PatchConflict(f"array index {index} out of range in path {pointer!r}")
    return index


def _resolve_parent(doc: JSONValue, tokens: list[str], pointer: str) -> JSONValue:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchConflict(f"path {pointer!r} does not exist: missing {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_array_index(token, len(node), pointer, allow_end=False)]
        else:
            raise PatchConflict(f"path {pointer!r} does not exist: {token!r} is not in a container")
    return node


def _get(doc: JSONValue, pointer: str) -> JSONValue:
    tokens = parse_pointer(pointer)
    if not tokens:
        return doc
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchConflict(f"path {pointer!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_array_index(last, len(parent), pointer, allow_end=False)]
    raise PatchConflict(f"path {pointer!r} does not exist")


def _add(doc: JSONValue, pointer: str, value: JSONValue) -> JSONValue:
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(last, len(parent), pointer, allow_end=True), value)
    else:
        raise PatchConflict(f"cannot add at {pointer!r}: parent is not an object or array")
    return doc


def _remove(doc: JSONValue, pointer: str) -> tuple[JSONValue, JSONValue]:
    tokens = parse_pointer(pointer)
    if not tokens:
        raise PatchConflict("cannot remove the whole document")
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchConflict(f"cannot remove {pointer!r}: path does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_array_index(last, len(parent), pointer, allow_end=False))
    raise PatchConflict(f"cannot remove {pointer!r}: path does not exist")


_MISSING = object()


def json_patch(document: JSONValue, operations: JSONValue) -> JSONValue:
    """Applies an RFC 6902 patch (a list of operations) and returns the result (inputs untouched)."""
    if not isinstance(operations, list):
        raise InvalidPatch("a JSON patch must be a JSON array of operations")
    doc = copy.deepcopy(document)
    for number, operation in enumerate(operations):
        if not isinstance(operation, dict):
            raise InvalidPatch(f"JSON patch operation {number} is not an object")
        op = operation.get("op")
        path = operation.get("path")
        if not isinstance(op, str):
            raise InvalidPatch(f"JSON patch operation {number} has no 'op'")
        if not isinstance(path, str):
            raise InvalidPatch(f"JSON patch operation {number} ({op}) has no string 'path'")
        value = operation.get("value", _MISSING)
        if op in ("add", "replace", "test") and value is _MISSING:
            raise InvalidPatch(f"JSON patch operation {number} ({op}) has no 'value'")
        source = operation.get("from")
        if op in ("move", "copy") and not isinstance(source, str):
            raise InvalidPatch(f"JSON patch operation {number} ({op}) has no string 'from'")
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(value))
        elif op == "remove":
            doc, _ = _remove(doc, path)
        elif op == "replace":
            _get(doc, path)  # must exist
            if parse_pointer(path):
                doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(value))
        elif op == "move":
            assert isinstance(source, str)
            if path != source and (path + "/").startswith(source + "/"):
                raise PatchConflict(f"cannot move {source!r} into its own child {path!r}")
            if path == source:
                _get(doc, source)
                continue
            doc, moved = _remove(doc, source)
            doc = _add(doc, path, moved)
        elif op == "copy":
            assert isinstance(source, str)
            doc = _add(doc, path, copy.deepcopy(_get(doc, source)))
        elif op == "test":
            actual = _get(doc, path)
            if not _json_equal(actual, value):
                raise PatchTestFailed(f"testing value {path} failed: expected {value!r}, found {actual!r}")
        else:
            raise InvalidPatch(f"JSON patch operation {number} has unknown op {op!r}")
    return doc
