"""The webhook's HTTP(S) face: AdmissionReview in, AdmissionReview out.

Routes: ``POST /webhook`` (also ``/mutate``), ``GET /healthz``, ``GET /readyz``.

* ``admission.k8s.io/v1`` and ``v1beta1`` reviews are accepted and answered in the same version, with
  ``response.uid`` echoing ``request.uid``; a patch is sent as ``patchType: JSONPatch`` with the operations
  base64-encoded in ``patch`` (both left out when nothing changed, as controller-runtime does).
* A denial is ``allowed: false`` with ``status.code`` 403, ``status.reason`` Forbidden and the reason in
  ``status.message``; an error is ``allowed: false`` with code 400 or 500 (controller-runtime conventions).
* A body that is not an AdmissionReview (bad JSON, wrong apiVersion/kind, no request) gets HTTP 400 with a
  v1 AdmissionReview explaining why; a body over 1 MiB gets HTTP 413. Nothing a client sends can stop the
  server: ``review()`` turns any internal failure into an errored review.

``review()`` is the whole protocol as a synchronous function of the body bytes, so it can be fuzzed without
a socket; ``create_app`` wraps it for aiohttp.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog
from aiohttp import web

from services.common.log import get_logger
from services.webhook.mutate import Decision, MutationPolicy, NodeGpus, Outcome, QuotaView, admit_pod

__all__ = [
    "ADMISSION_VERSIONS",
    "MAX_BODY_BYTES",
    "ClusterViews",
    "HttpReply",
    "NoViews",
    "WebhookHandler",
    "create_app",
]

MAX_BODY_BYTES: Final = 1 << 20  # HAMi reads request bodies through a 1 MiB limit
ADMISSION_V1: Final = "admission.k8s.io/v1"
ADMISSION_V1BETA1: Final = "admission.k8s.io/v1beta1"
ADMISSION_VERSIONS: Final = (ADMISSION_V1, ADMISSION_V1BETA1)

log = get_logger("webhook")


class ClusterViews(Protocol):
    """What admission reads from the cluster; None means "not known yet" and skips that check."""

    def quota_view(self, namespace: str) -> QuotaView | None: ...

    def inventory(self) -> Sequence[NodeGpus] | None: ...

    def status(self) -> dict[str, Any]: ...


class NoViews:
    """No cluster access (quota and inventory checks disabled)."""

    def quota_view(self, namespace: str) -> QuotaView | None:
        return None

    def inventory(self) -> Sequence[NodeGpus] | None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: dict[str, Any]


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"metadata": {}, "code": code}
    if message:
        status["message"] = message
    if reason:
        status["reason"] = reason
    return status


def _review(api_version: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def _bad_request(message: str, api_version: str = ADMISSION_V1, uid: str = "") -> HttpReply:
    response = {"uid": uid, "allowed": False, "status": _status(400, message, "BadRequest")}
    return HttpReply(400, _review(api_version, response))


def _response(uid: str, decision: Decision) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(list(decision.patch), separators=(",", ":")).encode()
        ).decode()
    if decision.outcome is Outcome.DENIED:
        response["status"] = _status(decision.code, decision.message, "Forbidden")
    elif decision.outcome is Outcome.ERRORED or decision.message:
        response["status"] = _status(decision.code, decision.message)
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return response


def _pod_label(obj: object) -> str:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(metadata, dict):
        return ""
    name = metadata.get("name")
    if isinstance(name, str) and name:
        return name
    generate = metadata.get("generateName")
    return f"{generate}*" if isinstance(generate, str) and generate else ""


class WebhookHandler:
    """The admission protocol around ``admit_pod``: decode, decide, log, encode."""

    def __init__(
        self, policy: MutationPolicy, views: ClusterViews | None = None, *, quota_check: bool = True
    ):
        self.policy = policy
        self.views: ClusterViews = views if views is not None else NoViews()
        self.quota_check = quota_check

    def review(self, body: bytes) -> HttpReply:
        """The reply to one POSTed body; never raises."""
        try:
            return self._review(body)
        except Exception as exc:  # the last line of defence: answer, log, keep serving
            log.exception("admission_internal_error")
            return HttpReply(
                500,
                _review(
                    ADMISSION_V1,
                    {
                        "uid": "",
                        "allowed": False,
                        "status": _status(500, f"internal error: {type(exc).__name__}"),
                    },
                ),
            )

    def _review(self, body: bytes) -> HttpReply:
        try:
            document = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            return _bad_request(f"request body is not valid JSON: {exc}")
        if not isinstance(document, dict):
            return _bad_request("request body must be a JSON object (an AdmissionReview)")
        api_version = document.get("apiVersion")
        if api_version not in ADMISSION_VERSIONS:
            return _bad_request(
                f"unsupported AdmissionReview apiVersion {api_version!r}; want one of "
                + ", ".join(ADMISSION_VERSIONS)
            )
        assert isinstance(api_version, str)
        kind = document.get("kind")
        if kind is not None and kind != "AdmissionReview":
            return _bad_request(f"expected kind AdmissionReview, got {kind!r}", api_version)
        request = document.get("request")
        if not isinstance(request, dict):
            return _bad_request("AdmissionReview has no request object", api_version)
        uid = request.get("uid", "")
        if not isinstance(uid, str):
            return _bad_request("request.uid must be a string", api_version)
        decision = self._decide(request)
        return HttpReply(200, _review(api_version, _response(uid, decision)))

    def _decide(self, request: Mapping[str, Any]) -> Decision:
        obj = request.get("object")
        namespace = request.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            metadata = obj.get("metadata") if isinstance(obj, dict) else None
            from_object = metadata.get("namespace") if isinstance(metadata, dict) else None
            namespace = from_object if isinstance(from_object, str) and from_object else "default"
        with structlog.contextvars.bound_contextvars(
            namespace=namespace, pod=_pod_label(obj), uid=str(request.get("uid", ""))
        ):
            skip = self._not_for_us(request)
            if skip is not None:
                log.debug("admission_skipped", why=skip.message)
                return skip
            decision = admit_pod(
                obj,
                self.policy,
                quota=self.views.quota_view(namespace) if self.quota_check else None,
                inventory=self.views.inventory() if self.policy.reject_unplaceable else None,
            )
            fields: dict[str, Any] = {
                "outcome": str(decision.outcome),
                "code": decision.code,
                "gpu": decision.has_resource,
                "patch_ops": len(decision.patch),
            }
            if decision.message:
                fields["message"] = decision.message
            if decision.warnings:
                fields["warnings"] = list(decision.warnings)
            if decision.notes:
                fields["notes"] = list(decision.notes)
            if decision.outcome is Outcome.ERRORED:
                log.warning("admission", **fields)
            elif decision.has_resource or decision.outcome is Outcome.DENIED:
                log.info("admission", **fields)
            else:
                log.debug("admission", **fields)
            return decision

    @staticmethod
    def _not_for_us(request: Mapping[str, Any]) -> Decision | None:
        """Requests the webhook is not registered for are allowed untouched (a misconfigured registration
        must not break other writes)."""
        kind = request.get("kind")
        kind_name = kind.get("kind") if isinstance(kind, dict) else None
        if isinstance(kind_name, str) and kind_name and kind_name != "Pod":
            return Decision(Outcome.ALLOWED, 200, f"kube-vgpu admits pods only; {kind_name} left unchanged")
        sub_resource = request.get("subResource")
        if isinstance(sub_resource, str) and sub_resource:
            return Decision(Outcome.ALLOWED, 200, f"subresource {sub_resource} left unchanged")
        operation = request.get("operation")
        if isinstance(operation, str) and operation and operation != "CREATE":
            return Decision(Outcome.ALLOWED, 200, f"only pod CREATE is mutated; {operation} left unchanged")
        return None


def _json(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(dict(body), status=status, dumps=lambda v: json.dumps(v, separators=(",", ":")))


@web.middleware
async def _never_crash(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"code": exc.status, "message": exc.reason}, exc.status)
    except Exception as exc:
        log.exception("http_handler_failed", path=request.path)
        return _json({"code": 500, "message": f"internal error: {type(exc).__name__}"}, 500)


def create_app(handler: WebhookHandler) -> web.Application:
    app = web.Application(middlewares=[_never_crash], client_max_size=MAX_BODY_BYTES)

    async def admit(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _too_large()
        content_type = request.content_type
        if content_type and content_type != "application/octet-stream" and "json" not in content_type:
            return _json(_bad_request(f"contentType={content_type}, expected application/json").body, 415)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large()
        reply = handler.review(body)
        return _json(reply.body, reply.status)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        return _json({"status": "ok", **handler.views.status()})

    for path in ("/webhook", "/mutate"):
        app.router.add_post(path, admit)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _too_large() -> web.Response:
    reply = _bad_request(f"request body is larger than {MAX_BODY_BYTES} bytes")
    reply.body["response"]["status"]["code"] = 413
    reply.body["response"]["status"]["reason"] = "RequestEntityTooLarge"
    return _json(reply.body, 413)
