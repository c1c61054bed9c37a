"""Kubernetes-style API errors: every failure leaves kube-local as a ``kind: Status`` body.

The official client turns such a body into ``ApiException`` with ``.status`` set to the code, so
messages and reasons follow the real apiserver's wording where callers might match on them.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


class ApiError(Exception):
    """An error answered as a ``Status`` object with the given HTTP code and reason."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str = "",
        kind: str = "",
        group: str = "",
        causes: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.kind = kind
        self.group = group
        self.causes = causes or []

    def status(self) -> JSON:
        details: JSON = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            body["details"] = details
        return body


class ResourceVersionConflict(ApiError):
    """409 raised by the store when the object changed since the caller read it.

    Callers that made an *unconditional* write (no resourceVersion from the client) retry on this
    one; an explicit precondition from the client surfaces it unchanged.
    """


def qualified(resource: str, group: str) -> str:
    """``pods`` or ``leases.coordination.k8s.io``: how the apiserver names a resource in messages."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(resource, group)} "{name}" not found',
        name=name,
        kind=resource,
        group=group,
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(resource, group)} "{name}" already exists',
        name=name,
        kind=resource,
        group=group,
    )


def conflict(resource: str, name: str, detail: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {detail}',
        name=name,
        kind=resource,
        group=group,
    )


STALE_DETAIL = "the object has been modified; please apply your changes to the latest version and try again"


def stale(resource: str, name: str, group: str = "") -> ResourceVersionConflict:
    return ResourceVersionConflict(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {STALE_DETAIL}',
        name=name,
        kind=resource,
        group=group,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, field: str, message: str, group: str = "") -> ApiError:
    """422 Invalid in the apiserver's ``Pod "x" is invalid: field: message`` shape."""
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {field}: {message}',
        name=name,
        kind=kind,
        group=group,
        causes=[{"reason": "FieldValueInvalid", "message": message, "field": field}],
    )


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def forbidden(resource: str, name: str, message: str, group: str = "") -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{qualified(resource, group)} "{name}" is forbidden: {message}',
        name=name,
        kind=resource,
        group=group,
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type or 'none'}) - "
        f"accepted media types include: {', '.join(accepted)}",
    )


class PathNotFound(ApiError):
    """404 for a path nothing serves. Its Status carries an empty ``details``, as the real server's does:
    kubectl (debug) reads ``details`` of such a 404 without checking it is there."""

    def status(self) -> JSON:
        return {**super().status(), "details": {}}


def path_not_found() -> ApiError:
    return PathNotFound(404, "NotFound", "the server could not find the requested resource")


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def success_status(resource: str, name: str, group: str = "", uid: str = "", code: int = 200) -> JSON:
    """The ``Status`` the apiserver answers for a delete that returns no object, or a binding."""
    body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    details: JSON = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if resource:
        details["kind"] = resource
    if uid:
        details["uid"] = uid
    if details:
        body["details"] = details
    if code != 200:
        body["code"] = code
    return body
