"""Mutating admission webhooks in kube-local: MutatingWebhookConfiguration objects, and real HTTPS calls
to a webhook server started here (aiohttp, certificate from a trustme CA)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import trustme
from aiohttp import web
from kubernetes import client
from kubernetes.client import ApiException

from services.common.selectors import SelectorError
from sim.kubelocal.webhook_config import label_selector

Review = dict[str, Any]
HAMI_SELECTOR = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def allow(review: Review, patch: list[Any] | None = None) -> Review:
    response: Review = {"uid": review["request"]["uid"], "allowed": True}
    if patch is not None:
        response.update(patchType="JSONPatch", patch=b64(json.dumps(patch).encode()))
    return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}


def label_patch(review: Review) -> Review:
    """Like HAMi's webhook: adds a label and moves the pod to hami-scheduler."""
    has_labels = bool(review["request"]["object"]["metadata"].get("labels"))
    ops: list[Any] = [{"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"}]
    if has_labels:
        ops.append({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"})
    else:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}})
    return allow(review, ops)


class WebhookServer:
    """An HTTPS admission webhook in its own thread; records every AdmissionReview it receives."""

    def __init__(self, ca: trustme.CA, respond: Callable[[Review], Review], delay: float = 0.0) -> None:
        self.ca = ca
        self.respond = respond
        self.delay = delay
        self.calls: list[tuple[str, Review]] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def reviews(self) -> list[Review]:
        return [review for _, review in self.calls]

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.calls.append((request.path_qs, review))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(self.respond(review))

    def start(self) -> WebhookServer:
        ready = threading.Event()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/{path:.*}", self._handle)
            runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            loop.run_until_complete(site.start())
            self.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def webhook(ca: trustme.CA) -> Iterator[Callable[..., WebhookServer]]:
    started: list[WebhookServer] = []

    def start(respond: Callable[[Review], Review] = label_patch, delay: float = 0.0) -> WebhookServer:
        server = WebhookServer(ca, respond, delay).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# kube-apiserver applies webhook configurations through an informer, so a pod created right after a
# create/patch/delete of one may still meet the previous configuration (kube-local applies them at once).
# Kubernetes' own e2e tests wait for that too; a second is far above what it takes on this machine.
REAL_SERVER_WEBHOOK_SETTLE_SECONDS = 1.0


class _SettlingAdmission:
    """The admission API, waiting after every change of a webhook configuration until the real server's
    informer has it."""

    def __init__(self, api: client.AdmissionregistrationV1Api) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)
        if not name.startswith(("create_", "patch_", "replace_", "delete_")):
            return method

        def settled(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            time.sleep(REAL_SERVER_WEBHOOK_SETTLE_SECONDS)
            return result

        return settled


@pytest.fixture
def admission(api_client: client.ApiClient, server_kind: str) -> client.AdmissionregistrationV1Api:
    api = client.AdmissionregistrationV1Api(api_client)
    if server_kind == "real":
        return cast(client.AdmissionregistrationV1Api, _SettlingAdmission(api))
    return api


def configuration(
    url: str,
    ca_pem: bytes | None,
    *,
    name: str = "hami-webhook",
    hook: str = "vgpu.hami.io",
    **overrides: Any,
) -> dict[str, Any]:
    """A MutatingWebhookConfiguration like HAMi's chart registers, pointed at ``url``."""
    client_config: dict[str, Any] = {"url": url + "/webhook"}
    if ca_pem is not None:
        client_config["caBundle"] = b64(ca_pem)
    spec: dict[str, Any] = {
        "name": hook,
        "clientConfig": client_config,
        "admissionReviewVersions": ["v1"],
        "rules": [
            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
        ],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "namespaceSelector": HAMI_SELECTOR,
        "objectSelector": HAMI_SELECTOR,
    }
    spec.update(overrides)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [spec],
    }


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{sock.getsockname()[1]}"


# --- the resource ------------------------------------------------------------------------------------


def test_configurations_are_served_with_discovery_crud_and_watch(admission, raw, url, served, ca):
    status, group = raw("GET", "/apis/admissionregistration.k8s.io")
    assert status == 200 and group["preferredVersion"]["groupVersion"] == "admissionregistration.k8s.io/v1"
    status, resources = raw("GET", "/apis/admissionregistration.k8s.io/v1")
    entry = next(r for r in resources["resources"] if r["name"] == "mutatingwebhookconfigurations")
    assert entry["namespaced"] is False and entry["kind"] == "MutatingWebhookConfiguration"
    assert {"create", "list", "watch", "delete"} <= set(entry["verbs"])

    body = configuration("https://127.0.0.1:9443", ca.cert_pem.bytes(), failurePolicy=None)
    del body["webhooks"][0]["failurePolicy"]
    created = admission.create_mutating_webhook_configuration(body)
    hook = created.webhooks[0]
    # The apiserver's v1 defaults are filled in.
    assert hook.failure_policy == "Fail" and hook.timeout_seconds == 10
    assert hook.match_policy == "Equivalent" and hook.reinvocation_policy == "Never"
    assert hook.rules[0].scope == "*"
    listed = admission.list_mutating_webhook_configuration()
    assert [c.metadata.name for c in listed.items] == ["hami-webhook"]

    watch = f"{url}{MWC_PATH}?watch=true&timeoutSeconds=1"
    with urllib.request.urlopen(watch, timeout=10, context=served.tls) as resp:
        first = json.loads(resp.readline())
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "hami-webhook"

    admission.patch_mutating_webhook_configuration("hami-webhook", {"webhooks": [{**body["webhooks"][0]}]})
    admission.delete_mutating_webhook_configuration("hami-webhook")
    assert admission.list_mutating_webhook_configuration().items == []


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        pytest.param(
            {"clientConfig": {"service": {"namespace": "kube-system", "name": "hami-scheduler"}}},
            "webhooks[0].clientConfig.service",
            "kube-local has no Services",
            # kube-local only: the real apiserver has Services, so a service reference is valid there.
            marks=pytest.mark.kube_local_only,
        ),
        ({"clientConfig": {"url": "http://127.0.0.1:80/webhook"}}, "webhooks[0].clientConfig.url", "'https'"),
        ({"sideEffects": "Some"}, "webhooks[0].sideEffects", 'Unsupported value: "Some"'),
        ({"timeoutSeconds": 31}, "webhooks[0].timeoutSeconds", "between 1 and 30"),
        ({"admissionReviewVersions": ["v2"]}, "webhooks[0].admissionReviewVersions", "v1, v1beta1"),
        pytest.param(
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "webhooks[0].namespaceSelector",
            "values: Required value",
            # kube-local only: the real apiserver names the deeper field, ...matchExpressions[0].values.
            marks=pytest.mark.kube_local_only,
        ),
    ],
)
def test_invalid_configurations_are_422_naming_the_field(admission, change, field, words):
    body = configuration("https://127.0.0.1:9443", None)
    body["webhooks"][0].update(change)
    with pytest.raises(ApiException) as err:
        admission.create_mutating_webhook_configuration(body)
    assert err.value.status == 422
    status = status_of(err.value)
    assert status["reason"] == "Invalid"
    assert status["message"].startswith(
        'MutatingWebhookConfiguration.admissionregistration.k8s.io "hami-webhook" is invalid: '
    )
    assert field in status["message"] and words in status["message"]
    assert status["details"]["causes"][0]["field"] == field


def test_label_selector_conversion():
    selector = label_selector(
        {
            "matchLabels": {"team": "gpu"},
            "matchExpressions": [
                {"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]},
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "owner", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"team": "gpu", "tier": "a", "owner": "x"})
    assert not selector.matches({"team": "gpu", "tier": "a", "owner": "x", "hami.io/webhook": "ignore"})
    assert not selector.matches({"team": "gpu", "tier": "c", "owner": "x"})
    assert not selector.matches({"team": "gpu", "tier": "a"})
    assert not selector.matches({"team": "gpu", "tier": "a", "owner": "x", "legacy": ""})
    assert label_selector({}).matches({}) and label_selector(None).empty
    with pytest.raises(SelectorError, match="operator"):
        label_selector({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})


# --- calls ------------------------------------------------------------------------------------------


# kube-local only: the real apiserver sends oldObject: null on CREATE; kube-local leaves the key out.
@pytest.mark.kube_local_only
def test_mutation_is_applied_and_review_has_the_apiserver_shape(admission, core, new_pod, webhook, ca):
    server = webhook()
    admission.create_mutating_webhook_configuration(configuration(server.url, ca.cert_pem.bytes()))
    created = core.create_namespaced_pod("default", new_pod("p", labels={"app": "x"}))
    assert created.metadata.labels == {"app": "x", "mutated": "yes"}
    assert created.spec.scheduler_name == "hami-scheduler"
    assert core.read_namespaced_pod("p", "default").metadata.labels["mutated"] == "yes"

    ((path, review),) = server.calls
    assert path == "/webhook?timeout=10s"
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    request = review["request"]
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["operation"] == "CREATE" and request["namespace"] == "default" and request["name"] == "p"
    assert request["dryRun"] is False and request["options"]["kind"] == "CreateOptions"
    assert "subResource" not in request and "oldObject" not in request
    assert request["object"]["spec"]["schedulerName"] == "default-scheduler"  # defaulted before admission
    assert "uid" not in request["object"]["metadata"]  # system fields come after admission
    assert request["uid"]


def test_v1beta1_is_used_when_the_webhook_asks_for_it_first(admission, core, new_pod, webhook, ca):
    def legacy(review: Review) -> Review:  # v1beta1 answers may omit apiVersion/kind and patchType
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {"seen": review["apiVersion"]}}]
        return {"response": {"allowed": True, "patch": b64(json.dumps(ops).encode())}}

    server = webhook(legacy)
    body = configuration(server.url, ca.cert_pem.bytes(), admissionReviewVersions=["v1beta1", "v1"])
    admission.create_mutating_webhook_configuration(body)
    created = core.create_namespaced_pod("default", new_pod("p"))
    assert created.metadata.annotations == {"seen": "admission.k8s.io/v1beta1"}
    assert server.reviews[0]["apiVersion"] == "admission.k8s.io/v1beta1"


def test_denial_fails_the_create_with_the_webhooks_code_and_message(admission, core, new_pod, webhook, ca):
    def deny(review: Review) -> Review:
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": False,
                "status": {"code": 403, "reason": "Forbidden", "message": "container main is privileged"},
            },
        }

    server = webhook(deny)
    admission.create_mutating_webhook_configuration(configuration(server.url, ca.cert_pem.bytes()))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert err.value.status == 403
    status = status_of(err.value)
    assert (
        status["message"]
        == 'admission webhook "vgpu.hami.io" denied the request: container main is privileged'
    )
    assert status["reason"] == "Forbidden" and status["code"] == 403
    assert core.list_namespaced_pod("default").items == []

    def deny_without_code(review: Review) -> Review:
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": False}}  # fmt: skip

    server.respond = deny_without_code
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert err.value.status == 400
    assert status_of(err.value)["message"] == (
        'admission webhook "vgpu.hami.io" denied the request without explanation'
    )


def test_dead_webhook_fail_rejects_and_ignore_proceeds_unmutated(admission, core, new_pod, ca):
    url = dead_url()
    admission.create_mutating_webhook_configuration(configuration(url, ca.cert_pem.bytes()))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert err.value.status == 500
    message = status_of(err.value)["message"]
    assert message.startswith(
        'Internal error occurred: failed calling webhook "vgpu.hami.io": failed to call'
    )
    assert f'Post "{url}/webhook?timeout=10s"' in message and "connection refused" in message
    assert core.list_namespaced_pod("default").items == []

    admission.patch_mutating_webhook_configuration(
        "hami-webhook", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
    )
    created = core.create_namespaced_pod("default", new_pod("p"))
    assert created.metadata.labels is None and created.spec.scheduler_name == "default-scheduler"


def test_selectors_skip_namespaces_and_objects_labelled_ignore(admission, core, new_pod, webhook, ca):
    server = webhook()
    admission.create_mutating_webhook_configuration(configuration(server.url, ca.cert_pem.bytes()))
    core.create_namespace({"metadata": {"name": "quiet", "labels": {"hami.io/webhook": "ignore"}}})
    core.create_namespace({"metadata": {"name": "busy"}})

    in_quiet = core.create_namespaced_pod("quiet", new_pod("a"))
    opted_out = core.create_namespaced_pod("busy", new_pod("b", labels={"hami.io/webhook": "ignore"}))
    normal = core.create_namespaced_pod("busy", new_pod("c", labels={"hami.io/webhook": "other"}))

    assert in_quiet.metadata.labels is None
    assert opted_out.metadata.labels == {"hami.io/webhook": "ignore"}
    assert normal.metadata.labels == {"hami.io/webhook": "other", "mutated": "yes"}
    assert [r["request"]["name"] for r in server.reviews] == ["c"]


def test_timeout_is_honoured_under_both_failure_policies(admission, core, new_pod, webhook, ca):
    server = webhook(delay=3.0)
    body = configuration(server.url, ca.cert_pem.bytes(), timeoutSeconds=1)
    admission.create_mutating_webhook_configuration(body)
    started = time.monotonic()
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert time.monotonic() - started < 2.5
    assert err.value.status == 500
    message = status_of(err.value)["message"]
    assert "context deadline exceeded" in message and "?timeout=1s" in message

    admission.patch_mutating_webhook_configuration(
        "hami-webhook", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
    )
    started = time.monotonic()
    created = core.create_namespaced_pod("default", new_pod("p"))
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert created.metadata.labels is None
    assert len(server.calls) == 2


def test_rules_leave_other_resources_operations_and_subresources_alone(
    admission, core, coordination, new_pod, webhook, ca
):
    server = webhook()
    admission.create_mutating_webhook_configuration(configuration(server.url, ca.cert_pem.bytes()))
    ns = core.create_namespace({"metadata": {"name": "other"}})
    node = core.create_node({"metadata": {"name": "n1"}})
    lease = coordination.create_namespaced_lease("default", {"metadata": {"name": "l"}, "spec": {}})
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "other"}
    assert node.metadata.labels is None and lease.metadata.labels is None
    assert server.calls == []

    core.create_namespaced_pod("default", new_pod("p"))
    assert len(server.calls) == 1
    # UPDATE is not in the rule's operations; pods/binding is not "pods".
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "y"}}})
    binding = {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}
    core.create_namespaced_pod_binding("p", "default", binding, _preload_content=False)
    assert len(server.calls) == 1
    assert core.read_namespaced_pod("p", "default").metadata.labels == {"mutated": "yes", "x": "y"}


# kube-local only: the real apiserver forbids the webhook's spec.schedulerName change on a pod update.
@pytest.mark.kube_local_only
def test_update_rules_get_the_old_object(admission, core, new_pod, webhook, ca):
    server = webhook()
    rules = [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]
    admission.create_mutating_webhook_configuration(
        configuration(server.url, ca.cert_pem.bytes(), rules=rules)
    )
    core.create_namespaced_pod("default", new_pod("p", labels={"app": "x"}))
    assert server.calls == []
    patched = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "y"}}})
    assert patched.metadata.labels == {"app": "y", "mutated": "yes"}
    request = server.reviews[0]["request"]
    assert request["operation"] == "UPDATE" and request["options"]["kind"] == "UpdateOptions"
    assert request["oldObject"]["metadata"]["labels"] == {"app": "x"}
    assert request["object"]["metadata"]["labels"] == {"app": "y"}


def test_subresource_rules_match_bindings(admission, core, new_pod, webhook, ca):
    def annotate(review: Review) -> Review:
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {"bound-by": "webhook"}}]
        return allow(review, ops)

    server = webhook(annotate)
    core.create_namespaced_pod("default", new_pod("p"))
    rules = [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["pods/binding"]}]
    admission.create_mutating_webhook_configuration(
        configuration(server.url, ca.cert_pem.bytes(), rules=rules, objectSelector={})
    )
    binding = {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}
    core.create_namespaced_pod_binding("p", "default", binding, _preload_content=False)
    request = server.reviews[0]["request"]
    assert request["subResource"] == "binding" and request["kind"]["kind"] == "Binding"
    assert core.read_namespaced_pod("p", "default").metadata.annotations == {"bound-by": "webhook"}


@pytest.mark.parametrize("bundle", ["other-ca", "garbage"])
def test_bad_ca_bundle_is_a_call_failure_subject_to_failure_policy(admission, core, new_pod, webhook, bundle):
    server = webhook()
    ca_pem = trustme.CA().cert_pem.bytes() if bundle == "other-ca" else b"not a certificate"
    admission.create_mutating_webhook_configuration(configuration(server.url, ca_pem))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert err.value.status == 500
    message = status_of(err.value)["message"]
    assert 'failed calling webhook "vgpu.hami.io"' in message
    assert ("tls: failed to verify certificate" if bundle == "other-ca" else "root certificates") in message
    assert server.calls == []

    admission.patch_mutating_webhook_configuration(
        "hami-webhook", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
    )
    assert core.create_namespaced_pod("default", new_pod("p")).metadata.labels is None


def test_mismatched_response_uid_is_a_call_failure(admission, core, new_pod, webhook, ca):
    def wrong_uid(review: Review) -> Review:
        answer = allow(review)
        answer["response"]["uid"] = "not-the-request"
        return answer

    server = webhook(wrong_uid)
    admission.create_mutating_webhook_configuration(configuration(server.url, ca.cert_pem.bytes()))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("p"))
    assert err.value.status == 500
    assert 'expected response.uid="' in status_of(err.value)["message"]


def test_dry_run_is_sent_to_side_effect_free_webhooks(admission, core, new_pod, webhook, ca):
    server = webhook()
    body = configuration(server.url, ca.cert_pem.bytes(), sideEffects="NoneOnDryRun")
    admission.create_mutating_webhook_configuration(body)
    result = core.create_namespaced_pod("default", new_pod("p"), dry_run="All")
    assert result.metadata.labels == {"mutated": "yes"}
    assert server.reviews[0]["request"]["dryRun"] is True
    assert core.list_namespaced_pod("default").items == []


def test_webhooks_are_called_in_configuration_name_order_and_chain(admission, core, new_pod, webhook, ca):
    def step(value: str) -> Callable[[Review], Review]:
        def respond(review: Review) -> Review:
            labels = review["request"]["object"]["metadata"].get("labels") or {}
            seen = labels.get("order", "")
            return allow(
                review, [{"op": "add", "path": "/metadata/labels", "value": {"order": seen + value}}]
            )

        return respond

    first, second = webhook(step("a")), webhook(step("b"))
    pem = ca.cert_pem.bytes()
    admission.create_mutating_webhook_configuration(
        configuration(second.url, pem, name="z-second", hook="b.x.io")
    )
    admission.create_mutating_webhook_configuration(
        configuration(first.url, pem, name="a-first", hook="a.x.io")
    )
    assert core.create_namespaced_pod("default", new_pod("p")).metadata.labels == {"order": "ab"}
