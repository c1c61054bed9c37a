"""`kube-vgpu-certgen` (services/common/certgen.py), the self-signed-certs component's Job: idempotent Secret
issuing and caBundle patching."""

from __future__ import annotations

import base64
import copy
import datetime
import json
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common import certgen
from services.common.certs import issue_serving_certificate
from services.common.config import KubeAccess
from services.common.kube import new_api_client, raw_json

NOW = datetime.datetime.now(datetime.UTC)
MONTH = datetime.timedelta(days=30)
HOSTS = ["kube-vgpu-webhook", "kube-vgpu-webhook.kube-vgpu.svc", "127.0.0.1"]


@dataclass
class Raw:
    data: bytes


class FakeSecrets:
    """The three Secret calls certgen makes, over a dict (kube-local serves no Secrets)."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.create_conflicts = 0

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Raw:
        if (namespace, name) not in self.store:
            raise ApiException(status=404, reason="NotFound")
        return Raw(json.dumps(self.store[(namespace, name)]).encode())

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any], **_: Any) -> Raw:
        key = (namespace, body["metadata"]["name"])
        if self.create_conflicts:
            self.create_conflicts -= 1
            self.store[key] = copy.deepcopy(body)  # someone else's, created just before us
            raise ApiException(status=409, reason="AlreadyExists")
        if key in self.store:
            raise ApiException(status=409, reason="AlreadyExists")
        self.store[key] = copy.deepcopy(body)
        self.writes.append("create")
        return Raw(json.dumps(body).encode())

    def patch_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Raw:
        secret = self.store[(namespace, name)]
        secret.setdefault("data", {}).update(body["data"])
        self.writes.append("patch")
        return Raw(json.dumps(secret).encode())


def data_for(hosts: list[str], days: int = 365) -> dict[str, str]:
    return certgen.secret_data(issue_serving_certificate(hosts, days=days))


def test_service_hosts() -> None:
    assert certgen.service_hosts("svc", "ns", ["127.0.0.1", "svc"]) == [
        "svc",
        "svc.ns",
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
        "127.0.0.1",
    ]
    assert certgen.service_hosts(None, "ns", ["localhost"], cluster_domain="") == ["localhost"]


def test_stale_reason() -> None:
    current = data_for(HOSTS)
    assert certgen.stale_reason(current, HOSTS, now=NOW, renew_before=MONTH) is None
    assert certgen.stale_reason(current, ["127.0.0.1"], now=NOW, renew_before=MONTH) is None
    assert "does not name other" in (
        certgen.stale_reason(current, [*HOSTS, "other"], now=NOW, renew_before=MONTH) or ""
    )
    assert "renewal window" in (
        certgen.stale_reason(data_for(HOSTS, days=10), HOSTS, now=NOW, renew_before=MONTH) or ""
    )
    other = data_for(HOSTS)
    assert "does not match" in (
        certgen.stale_reason({**current, "tls.key": other["tls.key"]}, HOSTS, now=NOW, renew_before=MONTH)
        or ""
    )
    assert "not signed" in (
        certgen.stale_reason({**current, "ca.crt": other["ca.crt"]}, HOSTS, now=NOW, renew_before=MONTH) or ""
    )
    assert certgen.stale_reason({}, HOSTS, now=NOW, renew_before=MONTH) == "the Secret has no data"
    assert "no tls.key" in (
        certgen.stale_reason(
            {k: v for k, v in current.items() if k != "tls.key"}, HOSTS, now=NOW, renew_before=MONTH
        )
        or ""
    )
    assert "not base64" in (
        certgen.stale_reason({**current, "ca.crt": "%%%"}, HOSTS, now=NOW, renew_before=MONTH) or ""
    )


def ensure(core: FakeSecrets, hosts: list[str] = HOSTS, **kwargs: Any) -> str:
    return certgen.ensure_secret(
        core,
        name="kube-vgpu-webhook-tls",
        namespace="kube-vgpu",
        hosts=hosts,
        days=3650,
        renew_before=MONTH,
        **kwargs,
    )


def test_ensure_secret_is_idempotent() -> None:
    core = FakeSecrets()
    assert ensure(core) == "created"
    secret = core.store[("kube-vgpu", "kube-vgpu-webhook-tls")]
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert cert.not_valid_after_utc - NOW > datetime.timedelta(days=3600)
    first = dict(secret["data"])
    assert ensure(core) == "unchanged"
    assert core.store[("kube-vgpu", "kube-vgpu-webhook-tls")]["data"] == first
    assert ensure(core, [*HOSTS, "localhost"]) == "renewed"
    assert core.store[("kube-vgpu", "kube-vgpu-webhook-tls")]["data"] != first
    assert core.writes == ["create", "patch"]
    # Ten years on, within the renewal window: issued again.
    assert ensure(core, now=NOW + datetime.timedelta(days=3640)) == "renewed"


def test_ensure_secret_accepts_a_concurrent_creation() -> None:
    core = FakeSecrets()
    core.create_conflicts = 1
    assert ensure(core) == "unchanged"  # the other run's Secret is current: kept
    assert core.writes == []


def test_ensure_secret_refuses_a_foreign_secret_type() -> None:
    core = FakeSecrets()
    core.store[("kube-vgpu", "kube-vgpu-webhook-tls")] = {"type": "Opaque", "data": {"x": "eA=="}}
    with pytest.raises(certgen.CertgenError, match="Opaque"):
        ensure(core)
    with pytest.raises(certgen.CertgenError, match="no host"):
        ensure(FakeSecrets(), [])


def test_ca_bundle_patch() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    bundle = base64.b64encode(ca).decode()
    config: dict[str, Any] = {
        "webhooks": [
            {"name": "a.example.com", "clientConfig": {"caBundle": bundle}},
            {"name": "b.example.com", "clientConfig": {"service": {"name": "s"}}},
        ]
    }
    assert certgen.ca_bundle_patch(config, ca) == [
        {"op": "test", "path": "/webhooks/1/name", "value": "b.example.com"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
    ]
    config["webhooks"][1]["clientConfig"]["caBundle"] = bundle
    assert certgen.ca_bundle_patch(config, ca) == []


def webhook_configuration() -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "kube-vgpu-webhook"},
        "webhooks": [
            {
                "name": "vgpu.hami.io",
                "clientConfig": {"url": "https://127.0.0.1:9/webhook"},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
            }
        ],
    }


def test_patch_ca_bundle_against_kube_local(kube_local_url: str) -> None:
    secrets = FakeSecrets()
    with new_api_client(KubeAccess(server=kube_local_url)) as api:
        admission = client.AdmissionregistrationV1Api(api)
        body: Any = webhook_configuration()
        admission.create_mutating_webhook_configuration(body)
        with pytest.raises(certgen.CertgenError, match="run `kube-vgpu-certgen create` first"):
            certgen.patch_ca_bundle(
                secrets,
                admission,
                secret_name="kube-vgpu-webhook-tls",
                namespace="kube-vgpu",
                webhook_name="x",
            )
        ensure(secrets)
        kwargs = {"secret_name": "kube-vgpu-webhook-tls", "namespace": "kube-vgpu"}
        with pytest.raises(certgen.CertgenError, match="MutatingWebhookConfiguration missing not found"):
            certgen.patch_ca_bundle(secrets, admission, webhook_name="missing", **kwargs)
        assert (
            certgen.patch_ca_bundle(secrets, admission, webhook_name="kube-vgpu-webhook", **kwargs)
            == "patched"
        )
        (hook,) = raw_json(admission.read_mutating_webhook_configuration, "kube-vgpu-webhook")["webhooks"]
        assert hook["clientConfig"] == {
            "url": "https://127.0.0.1:9/webhook",
            "caBundle": secrets.store[("kube-vgpu", "kube-vgpu-webhook-tls")]["data"]["ca.crt"],
        }
        assert (
            certgen.patch_ca_bundle(secrets, admission, webhook_name="kube-vgpu-webhook", **kwargs)
            == "unchanged"
        )


def test_main_usage_and_failures(kube_local_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(certgen, "default_namespace", lambda: "")
    assert certgen.main(["patch", "--secret-name=s", "--webhook-name=w", f"--server={kube_local_url}"]) == 2
    assert certgen.main(["create", "--secret-name=s", "--namespace=ns", "--days=0"]) == 2
    # kube-local serves no Secrets: reading one is a 404, so `patch` reports the missing Secret.
    argv = ["patch", "--secret-name=s", "--webhook-name=w", "--namespace=ns", f"--server={kube_local_url}"]
    assert certgen.main(argv) == 1


def test_default_namespace(tmp_path: Any) -> None:
    assert certgen.default_namespace({"POD_NAMESPACE": "a"}) == "a"
    file = tmp_path / "namespace"
    file.write_text("b\n")
    assert certgen.default_namespace({}, file) == "b"
    assert certgen.default_namespace({}, tmp_path / "missing") == ""
