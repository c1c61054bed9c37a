"""`kube-vgpu-certgen`: self-signed serving certificates for the webhook and extender, without cert-manager.

Run by the `self-signed-certs` kustomize component as a plain Job (there are no Helm hooks), so both verbs are
idempotent and safe to re-run on every `kubectl apply`:

``create --secret-name NAME --service SVC [--host H ...]``
    Keeps the Secret when it already holds a serving certificate that names every host, is signed by the
    Secret's ``ca.crt``, matches ``tls.key`` and stays valid for ``--renew-before-days``; otherwise issues a
    fresh CA and serving certificate (`services.common.certs`) and creates or overwrites the Secret
    (type ``kubernetes.io/tls``: ``ca.crt``, ``tls.crt``, ``tls.key``). The hosts are ``SVC``,
    ``SVC.<ns>``, ``SVC.<ns>.svc``, ``SVC.<ns>.svc.<cluster domain>`` plus every ``--host`` (e.g. 127.0.0.1
    for kube-scheduler's sidecar).
``patch --secret-name NAME --webhook-name MWC``
    Sets ``clientConfig.caBundle`` of every webhook of MutatingWebhookConfiguration MWC to the Secret's
    ``ca.crt``; writes nothing when they already match.

The namespace is ``--namespace``, else ``$POD_NAMESPACE``, else the service account's namespace file. Exit
codes: 0 done (or nothing to do), 1 API error or missing object, 2 usage or bad input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from services.common.certs import ServingCertificate, issue_serving_certificate
from services.common.config import KubeAccess
from services.common.kube import KubeAccessError, new_api_client, raw_json
from services.common.log import configure_logging, get_logger

PROG = "kube-vgpu-certgen"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SECRET_TYPE = "kubernetes.io/tls"
CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

log = get_logger(PROG)


class CertgenError(RuntimeError):
    """A problem the operator must fix (missing object, bad input); the message says which."""


# --- pure parts ---------------------------------------------------------------------------------------------


def service_hosts(
    service: str | None, namespace: str, extra: Sequence[str] = (), cluster_domain: str = "cluster.local"
) -> list[str]:
    """The names a client may dial for Service `service` in `namespace`, then `extra`, without duplicates."""
    hosts: list[str] = []
    if service:
        hosts += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
        if cluster_domain:
            hosts.append(f"{service}.{namespace}.svc.{cluster_domain}")
    hosts += [h.strip() for h in extra if h.strip()]
    return list(dict.fromkeys(hosts))


def _decode(data: Mapping[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"no {key}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key} is not base64") from None


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = set(san.get_values_for_type(x509.DNSName))
    names.update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return names


def _normal_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def stale_reason(
    data: Mapping[str, Any] | None,
    hosts: Sequence[str],
    *,
    now: datetime.datetime,
    renew_before: datetime.timedelta,
) -> str | None:
    """Why the Secret's `data` must be re-issued, or None when it is current."""
    if not data:
        return "the Secret has no data"
    try:
        ca = x509.load_pem_x509_certificate(_decode(data, CA_KEY))
        cert = x509.load_pem_x509_certificate(_decode(data, CERT_KEY))
        key = serialization.load_pem_private_key(_decode(data, KEY_KEY), password=None)
    except ValueError as exc:
        return f"unreadable: {exc}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"{CERT_KEY} is not signed by {CA_KEY}"
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        return f"{KEY_KEY} does not match {CERT_KEY}"
    missing = sorted({_normal_host(h) for h in hosts} - {_normal_host(n) for n in _san_names(cert)})
    if missing:
        return f"certificate does not name {', '.join(missing)}"
    expires = min(cert.not_valid_after_utc, ca.not_valid_after_utc)
    if expires - now < renew_before:
        return f"expires {expires.isoformat()}, within the renewal window"
    return None


def secret_data(certificate: ServingCertificate) -> dict[str, str]:
    return {
        CA_KEY: base64.b64encode(certificate.ca_pem).decode(),
        CERT_KEY: base64.b64encode(certificate.cert_pem).decode(),
        KEY_KEY: base64.b64encode(certificate.key_pem).decode(),
    }


def ca_bundle_patch(webhook_config: Mapping[str, Any], ca_pem: bytes) -> list[dict[str, Any]]:
    """JSON patch setting every webhook's caBundle to `ca_pem`; empty when nothing changes.

    Each change is guarded by a `test` of the webhook's name, so a configuration edited in between (webhooks
    reordered) makes the patch fail instead of writing the CA into the wrong entry.
    """
    bundle = base64.b64encode(ca_pem).decode()
    ops: list[dict[str, Any]] = []
    for index, hook in enumerate(webhook_config.get("webhooks") or []):
        client_config = hook.get("clientConfig") or {}
        if client_config.get("caBundle") == bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": hook.get("name")})
        if "clientConfig" not in hook:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig", "value": {}})
        ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle})
    return ops


# --- API calls ----------------------------------------------------------------------------------------------


def _read_secret(core: Any, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        secret: dict[str, Any] = raw_json(core.read_namespaced_secret, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return secret


def ensure_secret(
    core: Any,
    *,
    name: str,
    namespace: str,
    hosts: Sequence[str],
    days: int,
    renew_before: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> str:
    """Make Secret `namespace/name` hold a current serving certificate; returns created|renewed|unchanged."""
    if not hosts:
        raise CertgenError("no host to issue the certificate for: give --service and/or --host")
    now = now or datetime.datetime.now(datetime.UTC)
    existing = _read_secret(core, name, namespace)
    if existing is not None:
        reason = stale_reason(existing.get("data"), hosts, now=now, renew_before=renew_before)
        if reason is None:
            log.info("secret_unchanged", secret=f"{namespace}/{name}", hosts=list(hosts))
            return "unchanged"
        log.info("secret_stale", secret=f"{namespace}/{name}", reason=reason)
    data = secret_data(issue_serving_certificate(list(hosts), common_name=hosts[0], days=days))
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "kube-vgpu"},
            },
            "type": SECRET_TYPE,
            "data": data,
        }
        try:
            raw_json(core.create_namespaced_secret, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Another run created it first: judge that one instead of overwriting it blindly.
            return ensure_secret(
                core,
                name=name,
                namespace=namespace,
                hosts=hosts,
                days=days,
                renew_before=renew_before,
                now=now,
            )
        log.info("secret_created", secret=f"{namespace}/{name}", hosts=list(hosts))
        return "created"
    if existing.get("type") not in (None, SECRET_TYPE):
        raise CertgenError(
            f"Secret {namespace}/{name} has type {existing.get('type')!r}, not {SECRET_TYPE}: delete it first"
        )
    raw_json(core.patch_namespaced_secret, name, namespace, {"data": data}, _content_type=MERGE_PATCH)
    log.info("secret_renewed", secret=f"{namespace}/{name}", hosts=list(hosts))
    return "renewed"


def patch_ca_bundle(core: Any, admission: Any, *, secret_name: str, namespace: str, webhook_name: str) -> str:
    """Copy the Secret's ca.crt into the MutatingWebhookConfiguration; returns patched|unchanged."""
    secret = _read_secret(core, secret_name, namespace)
    if secret is None:
        raise CertgenError(f"Secret {namespace}/{secret_name} not found: run `{PROG} create` first")
    try:
        ca_pem = _decode(secret.get("data") or {}, CA_KEY)
    except ValueError as exc:
        raise CertgenError(f"Secret {namespace}/{secret_name}: {exc}") from None
    try:
        config = raw_json(admission.read_mutating_webhook_configuration, webhook_name)
    except ApiException as exc:
        if exc.status == 404:
            raise CertgenError(f"MutatingWebhookConfiguration {webhook_name} not found") from None
        raise
    ops = ca_bundle_patch(config, ca_pem)
    if not ops:
        log.info("ca_bundle_unchanged", webhook_configuration=webhook_name)
        return "unchanged"
    raw_json(admission.patch_mutating_webhook_configuration, webhook_name, ops, _content_type=JSON_PATCH)
    log.info(
        "ca_bundle_patched", webhook_configuration=webhook_name, webhooks=len(config.get("webhooks") or [])
    )
    return "patched"


# --- command line -------------------------------------------------------------------------------------------


def default_namespace(environ: Mapping[str, str] | None = None, namespace_file: Path = NAMESPACE_FILE) -> str:
    environ = os.environ if environ is None else environ
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return namespace_file.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--secret-name", required=True, help="the kubernetes.io/tls Secret")
    common.add_argument("--namespace", help="namespace of the Secret (default $POD_NAMESPACE or the pod's)")
    common.add_argument("--server", help="API server URL without auth (kube-local)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, else in-cluster)")
    common.add_argument("--context", help="kubeconfig context")
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    create = sub.add_parser(
        "create", parents=[common], help="issue the Secret's CA and serving certificate unless current"
    )
    create.add_argument("--service", help="Service name: SVC, SVC.<ns>, SVC.<ns>.svc, SVC.<ns>.svc.<domain>")
    create.add_argument("--host", action="append", default=[], help="extra DNS name or IP (repeatable)")
    create.add_argument("--cluster-domain", default="cluster.local", help="cluster DNS domain (%(default)s)")
    create.add_argument("--days", type=int, default=3650, help="validity of a new CA and certificate")
    create.add_argument(
        "--renew-before-days", type=int, default=30, help="re-issue when less validity is left"
    )

    patch = sub.add_parser(
        "patch", parents=[common], help="set the MutatingWebhookConfiguration's caBundle to the CA"
    )
    patch.add_argument("--webhook-name", required=True, help="MutatingWebhookConfiguration name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(None, service=PROG)
    namespace = args.namespace or default_namespace()
    if not namespace:
        print(f"{PROG}: no namespace: pass --namespace or set POD_NAMESPACE", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "create" and (args.days <= 0 or args.renew_before_days < 0):
        print(f"{PROG}: --days must be positive and --renew-before-days not negative", file=sys.stderr)
        return EXIT_USAGE
    access = KubeAccess(server=args.server, kubeconfig=args.kubeconfig, context=args.context)
    try:
        with new_api_client(access) as api:
            core = client.CoreV1Api(api)
            if args.command == "create":
                hosts = service_hosts(args.service, namespace, args.host, args.cluster_domain)
                ensure_secret(
                    core,
                    name=args.secret_name,
                    namespace=namespace,
                    hosts=hosts,
                    days=args.days,
                    renew_before=datetime.timedelta(days=args.renew_before_days),
                )
            else:
                patch_ca_bundle(
                    core,
                    client.AdmissionregistrationV1Api(api),
                    secret_name=args.secret_name,
                    namespace=namespace,
                    webhook_name=args.webhook_name,
                )
    except KubeAccessError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CertgenError as exc:
        log.error("certgen_failed", error=str(exc))
        return EXIT_FAILED
    except (ApiException, HTTPError, OSError) as exc:
        log.error("api_error", error=str(exc).strip())
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
