"""The ``pods/eviction`` subresource: ``POST`` of a policy/v1 ``Eviction``, what ``kubectl drain`` sends.

kube-local has no PodDisruptionBudgets, so every eviction is allowed and is the pod's delete with the
Eviction's ``deleteOptions`` (grace period, preconditions, dryRun), through the same validating admission
as a ``DELETE``. The answer is the real server's: 201 with a ``Status`` of ``Success`` and code 201.
"""

from __future__ import annotations

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.deletes import Deletes
from sim.kubelocal.resources import PODS
from sim.kubelocal.wire import Target, check_json_content, decode_body, dry_run_requested, json_response

EVICTION_API_VERSION = "policy/v1"


async def evict(request: web.Request, t: Target, deletes: Deletes) -> web.Response:
    if request.method != "POST":
        raise errors.method_not_allowed()
    check_json_content(request)
    dry_run = dry_run_requested(request)
    body = await decode_body(request)
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object (an Eviction)")
    if body.get("kind") not in (None, "", "Eviction"):
        raise errors.bad_request(
            f"the kind in the data ({body.get('kind')}) does not match the expected kind (Eviction)"
        )
    md = body.get("metadata")
    md = md if isinstance(md, dict) else {}
    namespace, name = t.namespace or "", t.name or ""
    if md.get("namespace") not in (None, "", namespace):
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if md.get("name") != name:
        raise errors.bad_request("name in URL does not match name in Eviction object")
    options = body.get("deleteOptions")
    if options is not None and not isinstance(options, dict):
        raise errors.bad_request("deleteOptions must be a JSON object")
    if isinstance(options, dict) and options.get("dryRun"):
        dry_run = True
    await deletes.delete_one(PODS, namespace, name, options, dry_run)
    return json_response(errors.success_status("", "", code=201), 201)
