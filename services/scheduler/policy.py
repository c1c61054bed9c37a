"""Scheduling policies and the per-pod card filters that pod annotations impose (docs/hami-wire.md#policies,
docs/hami-wire.md#pod-annotations).

Plain data only: a `SchedulingPolicy` says how nodes and cards are ranked, `PodFilters` says which cards a pod
may use. Both are built once per pod and handed to the pure fit functions in `services.scheduler.fit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from services.common import wire
from services.common.codecs import WireFormatError, parse_bool, parse_type_list, parse_uuid_list

__all__ = [
    "GPU_SORT_KEYS",
    "PodFilters",
    "SchedulingPolicy",
    "gpu_policy_tokens",
    "is_chain_policy",
]

# The GPU policy words that order cards inside a comma chain; `mutex` and `topology-aware` change what Fit
# accepts or picks but are not sort keys (docs/hami-wire.md#gpu-score-and-sort).
GPU_SORT_KEYS: Final = frozenset({wire.POLICY_BINPACK, wire.POLICY_SPREAD, wire.POLICY_NUMA})


def gpu_policy_tokens(gpu_policy: str) -> tuple[str, ...]:
    """The words of a GPU policy (`"binpack"`, `"binpack,numa"`): comma-split, trimmed, empties dropped."""
    return tuple(token for token in (raw.strip() for raw in gpu_policy.split(",")) if token)


def is_chain_policy(gpu_policy: str) -> bool:
    """Whether the policy is sorted as a chain of keys: it has a comma, or it is the bare word `numa`."""
    return "," in gpu_policy or gpu_policy.strip() == wire.POLICY_NUMA


@dataclass(frozen=True, slots=True)
class SchedulingPolicy:
    """How candidates are ranked: `node_policy` (`binpack` | `spread`, anything else ranks like binpack)
    orders nodes; `gpu_policy` (`binpack`, `spread`, `topology-aware`, `mutex`, `numa` or a comma chain
    such as `binpack,numa`) orders and filters the cards of one node. Defaults are the Helm chart's."""

    node_policy: str = wire.POLICY_BINPACK
    gpu_policy: str = wire.POLICY_SPREAD

    def resolve(self, pod_annotations: Mapping[str, str]) -> SchedulingPolicy:
        """This policy with the pod's `hami.io/node-scheduler-policy` / `hami.io/gpu-scheduler-policy`
        overrides applied; an absent or blank annotation keeps the configured value."""
        node = pod_annotations.get(wire.NODE_SCHEDULER_POLICY, "").strip()
        gpu = pod_annotations.get(wire.GPU_SCHEDULER_POLICY, "").strip()
        if (not node or node == self.node_policy) and (not gpu or gpu == self.gpu_policy):
            return self  # the usual pod: no override, and resolving runs several times per cycle
        return replace(self, node_policy=node or self.node_policy, gpu_policy=gpu or self.gpu_policy)

    @property
    def spread_nodes(self) -> bool:
        return self.node_policy.strip() == wire.POLICY_SPREAD

    @property
    def tokens(self) -> tuple[str, ...]:
        return gpu_policy_tokens(self.gpu_policy)

    @property
    def mutex(self) -> bool:
        """Fit step 7: a card that already hosts a task is refused."""
        return wire.POLICY_MUTEX in self.tokens

    @property
    def topology_aware(self) -> bool:
        """Fit collects every passing card and picks the best-connected set
        (docs/hami-wire.md#topology-mode)."""
        return wire.POLICY_TOPOLOGY_AWARE in self.tokens


@dataclass(frozen=True, slots=True)
class PodFilters:
    """The card constraints a pod sets through its annotations (docs/hami-wire.md#pod-annotations). Empty
    values mean no constraint.

    `use_types` / `nouse_types` are upper-cased fragments matched as substrings of the upper-cased card type;
    `vgpu_mode` must contain the card's mode; `numa_bind` keeps all cards of one container on one NUMA node.
    """

    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: frozenset[str] = frozenset()
    nouse_uuids: frozenset[str] = frozenset()
    vgpu_mode: str | None = None
    numa_bind: bool = False

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> PodFilters:
        mode = annotations.get(wire.VGPU_MODE, "").strip()
        try:
            # Anything Go's ParseBool rejects leaves NUMA binding off, as in HAMi.
            numa_bind = parse_bool(annotations.get(wire.NUMA_BIND, "false").strip())
        except WireFormatError:
            numa_bind = False
        return cls(
            use_types=parse_type_list(annotations.get(wire.USE_GPU_TYPE)),
            nouse_types=parse_type_list(annotations.get(wire.NOUSE_GPU_TYPE)),
            use_uuids=parse_uuid_list(annotations.get(wire.USE_GPU_UUID)),
            nouse_uuids=parse_uuid_list(annotations.get(wire.NOUSE_GPU_UUID)),
            vgpu_mode=mode or None,
            numa_bind=numa_bind,
        )

    def type_allowed(self, device_type: str, device_mode: str) -> bool:
        """Fit step 3 (card side): `use-gputype`, `nouse-gputype` and `vgpu-mode`."""
        upper = device_type.upper()
        if self.use_types and not any(fragment in upper for fragment in self.use_types):
            return False
        if any(fragment in upper for fragment in self.nouse_types):
            return False
        return self.vgpu_mode is None or device_mode in self.vgpu_mode

    def uuid_allowed(self, uuid: str) -> bool:
        """Fit step 5: `use-gpuuuid` / `nouse-gpuuuid`."""
        if self.use_uuids and uuid not in self.use_uuids:
            return False
        return uuid not in self.nouse_uuids
