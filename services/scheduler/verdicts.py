"""Incremental filtering: per pod shape, the verdict of every node, carried across cache generations.

Under a burst every bind changes one node (reservation, then the pod's watch events), so the cache generation
moves between any two scheduling cycles and an outcome computed for the previous pod cannot be reused whole.
Almost every node is unchanged though. `VerdictTables` keeps, per pod shape (`filtering.evaluation_key`), the
verdict of each node it has fitted and the cache generation that table is exact for; a cycle asks the cache
which nodes changed since (`UsageCache.changed_since`, its change journal), forgets those verdicts, and
fits only them again (through the snapshot memo, `filtering.fit_on`). Nodes whose schedulability depends on
the time (a handshake awaiting the kubelet) are never kept. What is not memoisable (a namespace with a GPU
quota, a pod that already counts somewhere, Node objects sent by the caller) goes through
`filtering.evaluate` as before.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from operator import attrgetter
from typing import Final, cast

from services.common import wire
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import PodContext
from services.scheduler.filtering import FilterOutcome, fit_on
from services.scheduler.fit import NodeFit, SchedulingPolicy
from services.scheduler.quota import QuotaView

__all__ = ["VerdictTables"]

# Pod shapes with a table (a cluster schedules few distinct shapes at a time; the least recent goes first).
_TABLES_LIMIT: Final = 64
_score = attrgetter("score")


class _Table:
    __slots__ = ("generation", "verdicts")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.verdicts: dict[str, NodeFit] = {}


class VerdictTables:
    """Per-shape node verdicts over one `UsageCache`; used from the event loop thread only."""

    def __init__(self, cache: UsageCache, limit: int = _TABLES_LIMIT) -> None:
        self._cache = cache
        self._limit = max(1, limit)
        self._tables: dict[Hashable, _Table] = {}
        self.refits = 0  # verdicts computed (a table miss), for tests and profiling

    def _table(self, shape: Hashable) -> _Table:
        """The shape's table, brought up to the cache's current generation (changed nodes forgotten)."""
        table = self._tables.pop(shape, None)
        if table is None:
            if len(self._tables) >= self._limit:
                del self._tables[next(iter(self._tables))]
            table = _Table(self._cache.generation)
        else:
            generation, changed = self._cache.changed_since(table.generation)
            if changed is None:
                table.verdicts.clear()
            elif changed:
                pop = table.verdicts.pop
                for node in changed:
                    pop(node, None)
            table.generation = generation
        self._tables[shape] = table  # most recently used last
        return table

    def evaluate(
        self,
        shape: Hashable,
        pod: PodContext,
        candidates: Sequence[str],
        policy: SchedulingPolicy,
        quota: QuotaView | None,
    ) -> FilterOutcome:
        """`filtering.evaluate(pod, candidates, <the cache's snapshots>, policy, quota)` for a pod of `shape`
        that counts nowhere yet, re-fitting only nodes changed since this shape's last evaluation."""
        resolved = policy.resolve(pod.annotations)
        table = self._table(shape)
        known = table.verdicts
        if len(set(candidates)) != len(candidates):
            candidates = list(dict.fromkeys(candidates))
        # The walk over hundreds of candidates is done with C-level list operations: only the nodes without
        # a verdict (changed since the last cycle, or never seen) take a Python step each.
        found: list[NodeFit | None] = list(map(known.get, candidates))
        if not all(found):
            volatile = self._cache.volatile_nodes()
            snapshot = self._cache.snapshot
            for i, verdict in enumerate(found):
                if verdict is not None:
                    continue
                name = candidates[i]
                self.refits += 1
                node = snapshot(name)
                if node is None:
                    verdict = NodeFit(node=name, fits=False, reason=wire.NODE_UNREGISTERED)
                else:
                    verdict = fit_on(pod, node, resolved, quota)
                if name not in volatile:
                    known[name] = verdict
                found[i] = verdict
        verdicts = cast(list[NodeFit], found)
        fitting = [v for v in verdicts if v.fits]
        failed = {v.node: v.reason for v in verdicts if not v.fits} if len(fitting) < len(verdicts) else {}
        # `fit.choose_best`: the lowest node score under spread, the highest otherwise, the first such node on
        # ties (min and max keep the first of equal items).
        best: NodeFit | None = None
        if fitting:
            best = (min if resolved.spread_nodes else max)(fitting, key=_score)
        return FilterOutcome(
            verdicts=tuple(verdicts), failed=failed, policy=resolved, best=best, fitting=tuple(fitting)
        )
