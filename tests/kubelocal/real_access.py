"""Raw HTTPS access to the session's upstream kube-apiserver as its admin, for tests that speak HTTP
without the official client (urllib)."""

from __future__ import annotations

import ssl

import yaml

from tests.support.apiservers import ApiServer


def admin_tls(real: ApiServer) -> ssl.SSLContext:
    """Verifies the real apiserver against our CA and presents the admin client certificate of its admin
    kubeconfig, as kubectl would."""
    document = yaml.safe_load(real.real.admin_kubeconfig.read_text(encoding="utf-8"))
    user = document["users"][0]["user"]
    context = ssl.create_default_context(cafile=str(real.real.ca_file))
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return context
