"""Admission hook points of kube-local's write pipeline.

Every write goes through the same stages as in the apiserver::

    decode -> default -> MUTATING ADMISSION -> prepare (system fields) -> validate
           -> VALIDATING ADMISSION -> store (optimistic concurrency)

A mutating hook receives an :class:`AdmissionRequest` and returns the (possibly new) object, or
``None`` to leave it unchanged; a validating hook returns nothing. Either denies the request by
raising :class:`~sim.kubelocal.errors.ApiError` (``errors.forbidden(...)`` or an
``ApiError(400, "BadRequest", ...)`` with the webhook's message), which reaches the client as a
``Status``. Hooks run on the server's event loop and may await (an admission webhook is an HTTP
call); kube-local re-reads and retries an unconditional update if the object changed meanwhile, so
hooks may run more than once for one request.

Install hooks with ``KubeLocal(admission=AdmissionChain(mutating=[...]))`` or append to
``KubeLocal.admission.mutating`` / ``.validating`` before requests arrive. For CREATE the object has
no uid, creationTimestamp or generated name yet (as in a real AdmissionReview); DELETE passes the
object being deleted as ``old_object``; a pod binding is a CREATE on subresource ``binding`` whose
object is the ``Binding``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.kubelocal.resources import ResourceType

Obj = dict[str, Any]
Operation = Literal["CREATE", "UPDATE", "DELETE"]


@dataclass(frozen=True)
class AdmissionRequest:
    """What an AdmissionReview's ``request`` carries, in kube-local's terms."""

    operation: Operation
    resource: ResourceType
    namespace: str
    name: str
    object: Obj | None
    old_object: Obj | None = None
    subresource: str = ""
    dry_run: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


MutatingHook = Callable[[AdmissionRequest], Awaitable[Obj | None]]
ValidatingHook = Callable[[AdmissionRequest], Awaitable[None]]


@dataclass
class AdmissionChain:
    """Ordered hooks; mutating ones see each other's output, like the apiserver's webhook chain."""

    mutating: list[MutatingHook] = field(default_factory=list)
    validating: list[ValidatingHook] = field(default_factory=list)

    async def mutate(self, request: AdmissionRequest) -> Obj | None:
        obj = request.object
        for hook in self.mutating:
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
            changed = await hook(step)
            if changed is not None:
                obj = changed
        return obj

    async def validate(self, request: AdmissionRequest) -> None:
        for hook in self.validating:
            await hook(request)
