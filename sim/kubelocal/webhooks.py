"""Mutating admission webhooks: kube-local calls the webhooks of stored
``MutatingWebhookConfiguration`` objects the way the apiserver's MutatingAdmissionWebhook plugin does.

For each write (CREATE, and UPDATE) of a non-admissionregistration resource, configurations are
taken in name order and their webhooks in list order. A webhook is called when one of its ``rules``
matches (operation, API group, version, resource or ``resource/subresource``, scope) and both
``namespaceSelector`` (the namespace's labels; a Namespace's own labels; always true for other
cluster-scoped objects) and ``objectSelector`` (the object's labels, or the old object's) select the
request. The call is an HTTPS POST of an ``AdmissionReview`` in the first of the webhook's
``admissionReviewVersions`` kube-local speaks (v1, v1beta1) to ``clientConfig.url?timeout=<n>s``,
verified against ``clientConfig.caBundle`` (system roots when empty), bounded by ``timeoutSeconds``.

Outcomes, with the apiserver's wording:

* ``allowed: true`` with a ``JSONPatch`` -> the patch is applied and the next webhook sees the result;
* ``allowed: false`` -> the write fails with the webhook's status code (at least 400), reason and
  ``admission webhook "<name>" denied the request: <message>``;
* the call fails (connection, TLS, timeout, non-200, malformed or mismatched response) ->
  ``failurePolicy: Fail`` rejects the write with 500 ``Internal error occurred: failed calling
  webhook "<name>": ...``; ``Ignore`` logs it and goes on with the object unchanged;
* a patch that does not apply -> 500, whatever the failure policy (as in the apiserver).

A dry-run request reaching a webhook whose ``sideEffects`` is not None/NoneOnDryRun fails with 400.
``reinvocationPolicy: IfNeeded`` is accepted but webhooks are called once per request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from services.common.selectors import LabelSelector, SelectorError
from sim.kubelocal.admission import AdmissionRequest
from sim.kubelocal.errors import ApiError
from sim.kubelocal.patch import PatchError, json_patch
from sim.kubelocal.resources import MUTATING_WEBHOOK_CONFIGURATIONS, NAMESPACES, ResourceType
from sim.kubelocal.store import Store, WatchFilter
from sim.kubelocal.webhook_config import (
    DEFAULT_TIMEOUT_SECONDS,
    SUPPORTED_REVIEW_VERSIONS,
    decode_ca_bundle,
    label_selector,
)

Obj = dict[str, Any]

log = structlog.get_logger("kube-local")

ADMISSION_GROUP = "admission.k8s.io"
#: Who kube-local says is asking: it has no authentication, so everyone is the cluster admin.
USER_INFO: Obj = {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]}
_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}


class WebhookCallError(Exception):
    """The webhook could not be called or answered nonsense: subject to ``failurePolicy``."""


@dataclass(frozen=True)
class Webhook:
    """One webhook of a stored configuration, as the dispatcher uses it."""

    configuration: str
    name: str
    spec: Obj

    @property
    def failure_policy(self) -> str:
        return str(self.spec.get("failurePolicy") or "Fail")

    @property
    def timeout(self) -> float:
        value = self.spec.get("timeoutSeconds")
        return float(value) if isinstance(value, int) and value > 0 else float(DEFAULT_TIMEOUT_SECONDS)

    @property
    def side_effects(self) -> str:
        return str(self.spec.get("sideEffects") or "Unknown")

    @property
    def client_config(self) -> Obj:
        config = self.spec.get("clientConfig")
        return config if isinstance(config, dict) else {}

    @property
    def review_version(self) -> str | None:
        for version in self.spec.get("admissionReviewVersions") or []:
            if version in SUPPORTED_REVIEW_VERSIONS:
                return str(version)
        return None


def rule_matches(rule: Any, operation: str, rt: ResourceType, subresource: str, *, namespaced: bool) -> bool:
    """Whether one ``RuleWithOperations`` covers this request."""
    if not isinstance(rule, dict):
        return False
    operations = rule.get("operations") or []
    if "*" not in operations and operation not in operations:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and rt.group not in groups:
        return False
    versions = rule.get("apiVersions") or []
    if "*" not in versions and rt.version not in versions:
        return False
    scope = rule.get("scope") or "*"
    if (scope == "Cluster" and namespaced) or (scope == "Namespaced" and not namespaced):
        return False
    for resource in rule.get("resources") or []:
        if resource == "*/*":
            return True
        if subresource:
            if resource in (f"{rt.plural}/{subresource}", f"*/{subresource}", f"{rt.plural}/*"):
                return True
        elif resource in (rt.plural, "*"):
            return True
    return False


def _labels(obj: Obj | None) -> dict[str, str]:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    labels = md.get("labels") if isinstance(md, dict) else None
    return labels if isinstance(labels, dict) else {}


def build_review(request: AdmissionRequest, version: str) -> Obj:
    """The ``AdmissionReview`` the apiserver sends for ``request`` in ``admission.k8s.io/<version>``."""
    rt = request.resource
    kind = rt.kind
    if request.subresource == "binding":
        kind = "Binding"
    elif request.subresource and request.subresource != "status":
        obj_kind = (request.object or {}).get("kind")
        kind = str(obj_kind) if obj_kind else kind
    gvk = {"group": rt.group, "version": rt.version, "kind": kind}
    gvr = {"group": rt.group, "version": rt.version, "resource": rt.plural}
    body: Obj = {
        "uid": request.uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": dict(gvk),
        "requestResource": dict(gvr),
    }
    if request.subresource:
        body["subResource"] = request.subresource
        body["requestSubResource"] = request.subresource
    if request.name:
        body["name"] = request.name
    if request.namespace and rt.namespaced:
        body["namespace"] = request.namespace
    body["operation"] = request.operation
    body["userInfo"] = copy.deepcopy(USER_INFO)
    if request.object is not None:
        body["object"] = request.object
    if request.old_object is not None:
        body["oldObject"] = request.old_object
    body["dryRun"] = request.dry_run
    if request.operation in _OPTIONS_KIND:
        body["options"] = {"kind": _OPTIONS_KIND[request.operation], "apiVersion": "meta.k8s.io/v1"}
    return {"kind": "AdmissionReview", "apiVersion": f"{ADMISSION_GROUP}/{version}", "request": body}


def denial_error(webhook: str, status: Any) -> ApiError:
    """``allowed: false`` as the error the client gets (the apiserver's ``ToStatusErr``)."""
    status = status if isinstance(status, dict) else {}
    code = status.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) and code >= 400 else 400
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    denied = f'admission webhook "{webhook}" denied the request'
    if message:
        text = f"{denied}: {message}"
    elif reason:
        text = f"{denied}: {reason}"
    else:
        text = f"{denied} without explanation"
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    return ApiError(code, reason, text, causes=causes if isinstance(causes, list) else None)


def _internal(webhook: str, detail: str) -> ApiError:
    return ApiError(
        500, "InternalError", f'Internal error occurred: failed calling webhook "{webhook}": {detail}'
    )


def read_response(review: Any, version: str, uid: str) -> Obj:
    """The ``response`` of a webhook's answer, checked as the apiserver checks it."""
    if not isinstance(review, dict):
        raise WebhookCallError("received invalid webhook response: expected an AdmissionReview object")
    if version == "v1":
        api_version, kind = review.get("apiVersion"), review.get("kind")
        if api_version != f"{ADMISSION_GROUP}/v1" or kind != "AdmissionReview":
            raise WebhookCallError(
                "received invalid webhook response: expected webhook response of "
                f"{ADMISSION_GROUP}/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
            )
    response = review.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("received invalid webhook response: webhook response was absent")
    if version == "v1":
        if response.get("uid") != uid:
            raise WebhookCallError(
                f'received invalid webhook response: expected response.uid="{uid}", '
                f'got "{response.get("uid") or ""}"'
            )
        if not isinstance(response.get("allowed"), bool):
            raise WebhookCallError(
                "received invalid webhook response: response.allowed must be true or false"
            )
        if response.get("patch") and response.get("patchType") is None:
            raise WebhookCallError(
                "received invalid webhook response: "
                "webhook returned response.patch but not response.patchType"
            )
    return response


def _decode_patch(response: Obj) -> list[Any] | None:
    raw = response.get("patch")
    if not raw:
        return None
    patch_type = response.get("patchType") or "JSONPatch"
    if patch_type != "JSONPatch":
        raise ValueError(f'unsupported patch type "{patch_type}"')
    try:
        ops = json.loads(base64.b64decode(str(raw), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the patch is not base64-encoded JSON: {exc}") from None
    if not isinstance(ops, list):
        raise ValueError("the patch must be a JSON array of operations")
    return ops


class WebhookDispatcher:
    """Calls the matching mutating webhooks of ``store``'s configurations; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ssl: dict[bytes, ssl.SSLContext] = {}

    def webhooks(self) -> list[Webhook]:
        """Every stored webhook, configurations in name order, webhooks in list order."""
        configs, _ = self.store.list_objects(WatchFilter(MUTATING_WEBHOOK_CONFIGURATIONS))
        found: list[Webhook] = []
        for config in configs:
            name = str((config.get("metadata") or {}).get("name") or "")
            for hook in config.get("webhooks") or []:
                if isinstance(hook, dict):
                    found.append(Webhook(name, str(hook.get("name") or ""), hook))
        return found

    def _selected(self, hook: Webhook, request: AdmissionRequest) -> bool:
        """Rules and selectors; raises SelectorError on a selector that does not parse."""
        rt = request.resource
        if not any(
            rule_matches(rule, request.operation, rt, request.subresource, namespaced=rt.namespaced)
            for rule in hook.spec.get("rules") or []
        ):
            return False
        ns_selector = label_selector(hook.spec.get("namespaceSelector"))
        if not ns_selector.empty:
            if rt is NAMESPACES:
                if not self._either_matches(ns_selector, request):
                    return False
            elif rt.namespaced:
                namespace = self.store.try_get(NAMESPACES, "", request.namespace)
                if not ns_selector.matches(_labels(namespace)):
                    return False
        obj_selector = label_selector(hook.spec.get("objectSelector"))
        return obj_selector.empty or self._either_matches(obj_selector, request)

    @staticmethod
    def _either_matches(selector: LabelSelector, request: AdmissionRequest) -> bool:
        return any(
            obj is not None and selector.matches(_labels(obj)) for obj in (request.object, request.old_object)
        )

    async def admit(self, request: AdmissionRequest) -> Obj | None:
        """Runs the matching webhooks; returns the mutated object (or None when nothing changed)."""
        if request.resource.group == MUTATING_WEBHOOK_CONFIGURATIONS.group:
            return None  # never called for webhook configurations, so a bad webhook can be removed
        if request.operation not in ("CREATE", "UPDATE") or request.object is None:
            return None
        obj = request.object
        changed = False
        for hook in self.webhooks():
            step = AdmissionRequest(
                operation=request.operation,
                resource=request.resource,
                namespace=request.namespace,
                name=request.name,
                object=obj,
                old_object=request.old_object,
                subresource=request.subresource,
                dry_run=request.dry_run,
                uid=request.uid,
            )
            try:
                if not self._selected(hook, step):
                    continue
            except SelectorError as exc:
                self._call_failed(hook, f"invalid selector: {exc}")
                continue
            if request.dry_run and hook.side_effects not in ("None", "NoneOnDryRun"):
                raise ApiError(400, "BadRequest", f'admission webhook "{hook.name}" does not support dry run')
            patched = await self._invoke(hook, step)
            if patched is not None:
                obj, changed = patched, True
        return obj if changed else None

    def _call_failed(self, hook: Webhook, detail: str) -> None:
        if hook.failure_policy == "Ignore":
            log.warning(
                "admission webhook failed; ignored (failurePolicy: Ignore)",
                webhook=hook.name,
                configuration=hook.configuration,
                error=detail,
            )
            return
        raise _internal(hook.name, detail)

    async def _invoke(self, hook: Webhook, request: AdmissionRequest) -> Obj | None:
        version = hook.review_version
        if version is None:
            self._call_failed(
                hook,
                "webhook does not accept any AdmissionReview version kube-local speaks "
                f"({', '.join(SUPPORTED_REVIEW_VERSIONS)})",
            )
            return None
        try:
            answer = await self._post(hook, build_review(request, version))
            response = read_response(answer, version, request.uid)
        except WebhookCallError as exc:
            self._call_failed(hook, str(exc))
            return None
        if not response.get("allowed"):
            log.info("admission webhook denied the request", webhook=hook.name, name=request.name)
            raise denial_error(hook.name, response.get("status"))
        try:
            ops = _decode_patch(response)
            if ops is None:
                return None
            patched = json_patch(request.object, ops)
        except (ValueError, PatchError) as exc:
            raise _internal(hook.name, f"failed to apply the webhook's patch: {exc}") from None
        if not isinstance(patched, dict):
            raise _internal(hook.name, "the webhook's patch did not leave an object")
        log.debug("admission webhook patched the object", webhook=hook.name, operations=len(ops))
        return patched

    def _ssl_context(self, hook: Webhook) -> ssl.SSLContext:
        try:
            pem = decode_ca_bundle(hook.client_config.get("caBundle"))
        except ValueError as exc:
            raise WebhookCallError(f"failed to call webhook: invalid caBundle: {exc}") from None
        context = self._ssl.get(pem)
        if context is None:
            try:
                context = (
                    ssl.create_default_context(cadata=pem.decode("ascii", "replace"))
                    if pem
                    else ssl.create_default_context()
                )
            except (ssl.SSLError, ValueError) as exc:
                raise WebhookCallError(
                    f"failed to call webhook: unable to load root certificates from caBundle: {exc}"
                ) from None
            self._ssl[pem] = context
        return context

    async def _post(self, hook: Webhook, review: Obj) -> Any:
        base = hook.client_config.get("url")
        if not isinstance(base, str) or not base:
            raise WebhookCallError("failed to call webhook: clientConfig.url is not set")
        context = self._ssl_context(hook)
        url = f"{base}?timeout={int(hook.timeout)}s"
        where = f'Post "{url}"'
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=hook.timeout)) as session,
                session.post(url, json=review, ssl=context) as resp,
            ):
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise WebhookCallError(
                f"failed to call webhook: {where}: tls: failed to verify certificate: {exc.certificate_error}"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise WebhookCallError(f"failed to call webhook: {where}: tls: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            errno = exc.os_error.errno
            reason = os.strerror(errno) if errno else str(exc.os_error)
            raise WebhookCallError(
                f"failed to call webhook: {where}: dial tcp {exc.host}:{exc.port}: connect: {reason.lower()}"
            ) from None
        except TimeoutError:
            raise WebhookCallError(f"failed to call webhook: {where}: context deadline exceeded") from None
        except aiohttp.ClientError as exc:
            raise WebhookCallError(f"failed to call webhook: {where}: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise WebhookCallError(
                f"failed to call webhook: the server responded with the status code {status} "
                "but did not return more information"
            )
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise WebhookCallError(
                f"received invalid webhook response: the answer is not JSON: {exc}"
            ) from None
