"""The event correlator: one Event per (object, source, type, reason, message) whose count grows, the spam
filter's token bucket, the aggregation of similar events, bounded caches; time injected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.event_correlation import (
    COMBINED_PREFIX,
    Correlation,
    CorrelatorLimits,
    EventCorrelator,
    EventSource,
    InvolvedObject,
    LruCache,
    TokenBucket,
)

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POD = InvolvedObject("Pod", "default", "stuck", "u-1")
SCHEDULER = EventSource("hami-scheduler")


def _fail(
    correlator: EventCorrelator,
    now: datetime,
    message: str = "no available node, 2 nodes do not meet",
    pod: InvolvedObject = POD,
) -> Correlation:
    return correlator.correlate(pod, SCHEDULER, "Warning", "FilteringFailed", message, now)


def _write(correlator: EventCorrelator, correlation: Correlation, names: dict[str, int]) -> None:
    """What the recorder does after a successful write: a create names a new Event, a patch reuses one."""
    assert not correlation.skip
    name = correlation.existing_name or f"stuck.{len(names)}"
    names[name] = correlation.count
    correlator.observed(correlation, name)


def test_a_pod_failing_200_times_has_one_event_with_count_200() -> None:
    correlator = EventCorrelator()
    names: dict[str, int] = {}
    for i in range(200):
        # one retry every 5 minutes: within the spam filter's allowance (burst 25, one token per 5 min)
        correlation = _fail(correlator, START + timedelta(minutes=5 * i))
        assert (correlation.existing_name is None) == (i == 0)
        _write(correlator, correlation, names)
    assert names == {"stuck.0": 200}
    assert correlation.first == START and correlation.last == START + timedelta(minutes=995)


@pytest.mark.parametrize(
    ("calls", "step_seconds", "allowed"),
    [
        (25, 0.0, 25),  # the burst
        (30, 0.0, 25),  # past it, refused
        (30, 300.0, 30),  # one refill per 5 minutes keeps up
        (40, 12.0, 26),  # 25 + 39*12 s = 468 s of refill -> one more token
    ],
)
def test_spam_filter_is_a_token_bucket_per_object(calls: int, step_seconds: float, allowed: int) -> None:
    correlator = EventCorrelator()
    names: dict[str, int] = {}
    passed = 0
    for i in range(calls):
        correlation = _fail(correlator, START + timedelta(seconds=step_seconds * i))
        if not correlation.skip:
            passed += 1
            _write(correlator, correlation, names)
    assert passed == allowed
    assert list(names.values()) == [allowed]  # refused writes do not count
    other = _fail(
        correlator,
        START + timedelta(seconds=step_seconds * calls),
        pod=InvolvedObject("Pod", "default", "other", "u-2"),
    )
    assert not other.skip  # another pod has a bucket of its own


@pytest.mark.parametrize(
    ("elapsed", "tokens"),
    [(0.0, 2), (5.0, 2), (10.0, 3), (25.0, 4), (1000.0, 4), (-50.0, 2)],
)
def test_token_bucket_refills_up_to_its_burst(elapsed: float, tokens: int) -> None:
    bucket = TokenBucket(burst=4, refill_seconds=10.0, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    taken = 0
    while bucket.take(elapsed):
        taken += 1
    assert taken == tokens


def test_more_than_ten_similar_messages_become_one_combined_event() -> None:
    correlator = EventCorrelator()
    names: dict[str, int] = {}
    results = []
    for i in range(14):
        correlation = _fail(correlator, START + timedelta(seconds=i), message=f"{i} nodes NodeUnfitPod(x)")
        results.append(correlation)
        _write(correlator, correlation, names)
    assert [r.message for r in results[:10]] == [f"{i} nodes NodeUnfitPod(x)" for i in range(10)]
    assert [r.message for r in results[10:]] == [
        COMBINED_PREFIX + f"{i} nodes NodeUnfitPod(x)" for i in range(10, 14)
    ]
    assert len(names) == 11 and max(names.values()) == 4  # ten Events, then one combined with count 4
    # a message seen before still counts on its own Event
    again = _fail(correlator, START + timedelta(seconds=20), message="3 nodes NodeUnfitPod(x)")
    assert again.message == "3 nodes NodeUnfitPod(x)" and again.count == 2


def test_similar_messages_are_counted_within_ten_minutes_only() -> None:
    correlator = EventCorrelator()
    for i in range(10):
        _fail(correlator, START, message=f"m{i}")
    assert _fail(correlator, START + timedelta(minutes=1), message="m10").message.startswith(COMBINED_PREFIX)
    later = START + timedelta(minutes=1, seconds=601)
    assert _fail(correlator, later, message="m11").message == "m11"


def test_events_differing_in_any_key_field_are_separate() -> None:
    correlator = EventCorrelator()
    base = correlator.correlate(POD, SCHEDULER, "Warning", "FilteringFailed", "m", START)
    correlator.observed(base, "e0")
    variants = [
        correlator.correlate(
            InvolvedObject("Pod", "default", "stuck", "u-9"),
            SCHEDULER,
            "Warning",
            "FilteringFailed",
            "m",
            START,
        ),
        correlator.correlate(POD, EventSource("other"), "Warning", "FilteringFailed", "m", START),
        correlator.correlate(
            POD, EventSource("hami-scheduler", "node-a"), "Warning", "FilteringFailed", "m", START
        ),
        correlator.correlate(POD, SCHEDULER, "Normal", "FilteringFailed", "m", START),
        correlator.correlate(POD, SCHEDULER, "Warning", "BindingFailed", "m", START),
        correlator.correlate(POD, SCHEDULER, "Warning", "FilteringFailed", "n", START),
    ]
    assert [v.existing_name for v in variants] == [None] * 6
    same = correlator.correlate(POD, SCHEDULER, "Warning", "FilteringFailed", "m", START, occurrences=3)
    assert (same.existing_name, same.count) == ("e0", 4)


def test_caches_are_bounded() -> None:
    correlator = EventCorrelator(CorrelatorLimits(cache_size=2))
    for name in ("a", "b", "c"):
        pod = InvolvedObject("Pod", "default", name, name)
        correlator.observed(_fail(correlator, START, pod=pod), f"{name}.0")
    # "a" was forgotten: its next occurrence creates a new Event
    assert _fail(correlator, START, pod=InvolvedObject("Pod", "default", "a", "a")).existing_name is None
    assert _fail(correlator, START, pod=InvolvedObject("Pod", "default", "c", "c")).existing_name == "c.0"


def test_lru_cache_forgets_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
