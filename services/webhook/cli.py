"""`kube-vgpu-webhook`: the mutating admission webhook for GPU pods (HAMi's `/webhook`, spec section 4).

Serves `POST /webhook` (and `/mutate`), `GET /healthz` and `GET /readyz` over HTTPS (certificate reloaded
when its files change). It routes GPU pods to the HAMi scheduler, applies HAMi's defaults, and denies what
could never run: privileged GPU containers, pods bound in advance, requests beyond the namespace's GPU quota
or beyond any registered card.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.entrypoint import run_service
from services.webhook.config import ENV_PREFIX, WebhookConfig
from services.webhook.runtime import run

PROG = "kube-vgpu-webhook"


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        WebhookConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
