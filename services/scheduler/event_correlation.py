"""Which Event object a recorded event lands on, the way client-go's event recorder decides it. Pure: no I/O,
the time is always passed in.

Three steps, in client-go's order:

* aggregation: more than `max_similar` different messages for one (source, object, type, reason) within
  `similar_window` turn every further new message into one `(combined from similar events): <message>`
  Event, so a pod whose reasons change on every retry still has a handful of Event objects;
* correlation: one Event object per (object, source, type, reason, message) whose `count` grows; the
  first occurrence is created, every later one patches that object's `count` and `lastTimestamp`;
* spam filter: a token bucket per (source, object), `spam_burst` writes at once then one per
  `spam_refill_seconds`, so a pod retried in a tight loop cannot flood the API server.

The caller writes what `correlate` decides and then calls `observed` with the Event's name, so a failed
write leaves the next occurrence to create the object again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

__all__ = [
    "COMBINED_PREFIX",
    "Correlation",
    "CorrelatorLimits",
    "EventCorrelator",
    "EventSource",
    "InvolvedObject",
    "LruCache",
    "TokenBucket",
]

COMBINED_PREFIX = "(combined from similar events): "

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A map of at most `size` entries; adding past that forgets the least recently used one."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class TokenBucket:
    """`burst` tokens, refilled at one per `refill_seconds`; time is a float of seconds passed in."""

    __slots__ = ("_burst", "_last", "_refill", "_tokens")

    def __init__(self, burst: int, refill_seconds: float, now: float) -> None:
        self._burst = float(max(1, burst))
        self._refill = max(refill_seconds, 1e-9)
        self._tokens = self._burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; a clock that steps back adds nothing."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(self._burst, self._tokens + elapsed / self._refill)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class EventSource:
    component: str
    host: str = ""


@dataclass(frozen=True, slots=True)
class CorrelatorLimits:
    """client-go's defaults: 10 similar messages in 10 minutes, a burst of 25 then one per 5 minutes."""

    max_similar: int = 10
    similar_window_seconds: float = 600.0
    spam_burst: int = 25
    spam_refill_seconds: float = 300.0
    cache_size: int = 4096


EventKey = tuple[InvolvedObject, EventSource, str, str, str]  # object, source, type, reason, message
_SimilarKey = tuple[InvolvedObject, EventSource, str, str]  # object, source, type, reason
_SpamKey = tuple[InvolvedObject, EventSource]


@dataclass(frozen=True, slots=True)
class Correlation:
    """What to write: `skip` (spam filter), else create (`existing_name` is None) or patch that Event.

    `count` is the Event's count after this write, `first` its firstTimestamp, `message` what it says
    (the combined message once aggregated)."""

    key: EventKey
    skip: bool
    message: str
    count: int
    first: datetime
    last: datetime
    existing_name: str | None


@dataclass(slots=True)
class _Observed:
    name: str
    count: int
    first: datetime


@dataclass(slots=True)
class _Similar:
    messages: set[str]
    last: float


class EventCorrelator:
    """Decides create / patch / skip for each event; state lives in LRU caches of bounded size."""

    def __init__(self, limits: CorrelatorLimits | None = None) -> None:
        self.limits = limits or CorrelatorLimits()
        size = self.limits.cache_size
        self._observed: LruCache[EventKey, _Observed] = LruCache(size)
        self._similar: LruCache[_SimilarKey, _Similar] = LruCache(size)
        self._spam: LruCache[_SpamKey, TokenBucket] = LruCache(size)

    def _aggregate(self, key: _SimilarKey, message: str, now: float) -> tuple[str, bool]:
        """The message to record and whether it is the combined one."""
        similar = self._similar.get(key)
        if similar is None or now - similar.last > self.limits.similar_window_seconds:
            similar = _Similar(set(), now)
            self._similar.put(key, similar)
        similar.last = now
        if message in similar.messages or len(similar.messages) < self.limits.max_similar:
            similar.messages.add(message)
            return message, False
        return COMBINED_PREFIX + message, True

    def _allowed(self, key: _SpamKey, now: float) -> bool:
        bucket = self._spam.get(key)
        if bucket is None:
            bucket = TokenBucket(self.limits.spam_burst, self.limits.spam_refill_seconds, now)
            self._spam.put(key, bucket)
        return bucket.take(now)

    def correlate(
        self,
        involved: InvolvedObject,
        source: EventSource,
        event_type: str,
        reason: str,
        message: str,
        now: datetime,
        occurrences: int = 1,
        first_seen: datetime | None = None,
    ) -> Correlation:
        """The write for `occurrences` identical events, the first seen at `first_seen` (default `now`),
        the last at `now` (the recorder's queue may merge several into one write; the spam filter charges
        one token per write)."""
        seconds = now.timestamp()
        recorded, combined = self._aggregate((involved, source, event_type, reason), message, seconds)
        # a combined event is one object per (object, source, type, reason): the first combined message
        # names it, later ones overwrite its message as client-go's patch does
        key_message = COMBINED_PREFIX if combined else recorded
        key: EventKey = (involved, source, event_type, reason, key_message)
        previous = self._observed.get(key)
        skip = not self._allowed((involved, source), seconds)
        if previous is None:
            first = now if first_seen is None else first_seen
            return Correlation(key, skip, recorded, max(1, occurrences), first, now, None)
        return Correlation(
            key, skip, recorded, previous.count + max(1, occurrences), previous.first, now, previous.name
        )

    def observed(self, correlation: Correlation, name: str) -> None:
        """Record that the Event `name` now holds `correlation` (called after a successful write)."""
        self._observed.put(correlation.key, _Observed(name, correlation.count, correlation.first))
