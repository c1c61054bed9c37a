#!/usr/bin/env python3
"""Regenerate kube-local's published API documents from the real kube-apiserver.

Starts sim/controlplane's upstream kube-apiserver (the pinned release, built and cached by
``make controlplane``), reads its ``/openapi/v2``, ``/openapi/v3`` documents and the Table columns of each
resource kube-local serves, cuts the OpenAPI documents down to what kube-local answers
(sim/kubelocal/openapi_filter.py) and writes them under sim/kubelocal/apidocs/ (gzip'd compact JSON, plus
table-columns.json). Run it after adding a resource to sim/kubelocal/resources.py or bumping the control
plane; tests/kubelocal/test_openapi.py fails until the committed files match the live server again.

    .venv/bin/python scripts/gen_kubelocal_apidocs.py            # start a control plane, write the files
    .venv/bin/python scripts/gen_kubelocal_apidocs.py --check    # compare instead of writing (exit 1)
    ... --server https://127.0.0.1:PORT --kubeconfig admin.kubeconfig   # use a running kube-apiserver
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sim.kubelocal.apidocs_capture import APIDOCS_DIR, Fetch, capture, file_bytes, read_document  # noqa: E402


def kubeconfig_tls(kubeconfig: Path) -> ssl.SSLContext:
    """TLS for a kubeconfig's first cluster and user (CA file, client certificate and key files)."""
    document = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
    cluster = document["clusters"][0]["cluster"]
    user = document["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return context


def https_fetch(server: str, tls: ssl.SSLContext) -> Fetch:
    def fetch(path: str, accept: str) -> bytes:
        request = urllib.request.Request(server + path, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=60, context=tls) as response:
            body: bytes = response.read()
            return body

    return fetch


@contextlib.contextmanager
def started_control_plane() -> Iterator[Fetch]:
    from sim.controlplane.launcher import RealControlPlane

    with tempfile.TemporaryDirectory(prefix="kubelocal-apidocs-") as run_dir:
        control_plane = RealControlPlane(Path(run_dir))
        control_plane.start()
        try:
            yield https_fetch(control_plane.url, control_plane.admin_ssl_context())
        finally:
            control_plane.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    parser.add_argument("--server", help="a running kube-apiserver's URL (with --kubeconfig)")
    parser.add_argument("--kubeconfig", type=Path, help="admin kubeconfig for --server")
    parser.add_argument("--out", type=Path, default=APIDOCS_DIR, help="where to write (default %(default)s)")
    args = parser.parse_args(argv)
    if (args.server is None) != (args.kubeconfig is None):
        parser.error("--server and --kubeconfig go together")
    with contextlib.ExitStack() as stack:
        if args.server is not None:
            fetch = https_fetch(args.server, kubeconfig_tls(args.kubeconfig))
        else:
            fetch = stack.enter_context(started_control_plane())
        documents = capture(fetch)
    if args.check:
        stale = [name for name, doc in documents.items() if read_document(name, args.out) != doc]
        extra = sorted({p.name for p in args.out.iterdir()} - set(documents))
        for name in stale:
            print(f"{args.out / name} differs from the live kube-apiserver", file=sys.stderr)
        for name in extra:
            print(f"{args.out / name} is no longer generated", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stale_file in set(args.out.iterdir()) - {args.out / name for name in documents}:
        stale_file.unlink()
    for name, document in sorted(documents.items()):
        data = file_bytes(name, document)
        (args.out / name).write_bytes(data)
        print(f"{args.out / name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
