"""The ``pods/ephemeralcontainers`` subresource (``kubectl debug pod/NAME``): a write there may only add
ephemeral containers to ``spec.ephemeralContainers``; everything else keeps its current value, and an
ephemeral container once added may be neither changed nor removed, as on the real server."""

from __future__ import annotations

import copy
from typing import Any

from sim.kubelocal import errors
from sim.kubelocal.resources import Obj
from sim.kubelocal.store import meta


def ephemeral_containers_update(new: Obj, current: Obj) -> Obj:
    """The pod ``current`` with the ephemeral containers of ``new`` (422 on a change to an existing one,
    or one without a name or image)."""
    name = str(meta(current).get("name"))
    requested: Any = (new.get("spec") or {}).get("ephemeralContainers") or []
    if not isinstance(requested, list) or not all(isinstance(c, dict) for c in requested):
        raise errors.invalid(
            "Pod", name, "spec.ephemeralContainers", "Invalid value: must be a list of objects"
        )
    existing = {c.get("name"): c for c in (current.get("spec") or {}).get("ephemeralContainers") or []}
    kept = {c.get("name") for c in requested}
    for index, container in enumerate(requested):
        for field in ("name", "image"):
            if not container.get(field):
                raise errors.invalid(
                    "Pod", name, f"spec.ephemeralContainers[{index}].{field}", "Required value"
                )
        old = existing.get(container["name"])
        if old is not None and old != container:
            raise errors.invalid(
                "Pod",
                name,
                "spec.ephemeralContainers",
                f'Forbidden: existing ephemeral containers "{container["name"]}" may not be changed',
            )
    removed = sorted(str(n) for n in existing if n not in kept)
    if removed:
        raise errors.invalid(
            "Pod",
            name,
            "spec.ephemeralContainers",
            f'Forbidden: existing ephemeral containers "{removed[0]}" may not be removed',
        )
    result = copy.deepcopy(current)
    result.setdefault("spec", {})["ephemeralContainers"] = copy.deepcopy(requested)
    return result
