"""The priority feedback loop (docs/hami-wire.md#monitor-feedback) as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.monitor.feedback import FeedbackInput, FeedbackWrite, feedback_pass

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


def c(
    key: str, *, rk: int, prio: int = 1, switch: int = 1, uuids: tuple[str, ...] = (GPU_A,)
) -> FeedbackInput:
    return FeedbackInput(key=key, uuids=uuids, priority=prio, recent_kernel=rk, utilization_switch=switch)


def by_key(writes: list[FeedbackWrite]) -> dict[object, FeedbackWrite]:
    return {w.key: w for w in writes}


def test_alone_on_its_gpu_the_switch_goes_off_and_activity_decays() -> None:
    writes = by_key(feedback_pass([c("a", rk=2, switch=1)]))
    assert writes["a"] == FeedbackWrite("a", recent_kernel=1, utilization_switch=0)


def test_two_active_at_the_same_priority_on_one_gpu_both_get_the_switch() -> None:
    writes = by_key(feedback_pass([c("a", rk=2, switch=0), c("b", rk=2, switch=0)]))
    assert writes["a"] == FeedbackWrite("a", recent_kernel=1, utilization_switch=1)
    assert writes["b"] == FeedbackWrite("b", recent_kernel=1, utilization_switch=1)


def test_same_priority_on_different_gpus_is_not_sharing() -> None:
    writes = by_key(feedback_pass([c("a", rk=2, switch=0), c("b", rk=2, switch=0, uuids=(GPU_B,))]))
    assert writes["a"].utilization_switch is None
    assert writes["b"].utilization_switch is None


def test_a_higher_priority_active_task_blocks_the_lower_one() -> None:
    high = c("high", rk=2, prio=0, switch=0)
    low = c("low", rk=2, prio=1, switch=0)
    writes = by_key(feedback_pass([high, low]))
    assert writes["low"] == FeedbackWrite("low", recent_kernel=-1, utilization_switch=1)
    # The high-priority task is alone at its priority and nothing outranks it.
    assert writes["high"] == FeedbackWrite("high", recent_kernel=1, utilization_switch=None)


def test_a_blocked_task_is_released_once_the_higher_one_went_idle() -> None:
    high = c("high", rk=1, prio=0, switch=0)  # decrements to 0: no longer active
    low = c("low", rk=-1, prio=1, switch=1)
    writes = by_key(feedback_pass([high, low]))
    assert writes["low"] == FeedbackWrite("low", recent_kernel=0, utilization_switch=0)
    assert writes["high"] == FeedbackWrite("high", recent_kernel=0, utilization_switch=None)


def test_inactive_tasks_do_not_block_and_are_left_alone() -> None:
    writes = feedback_pass([c("a", rk=0, prio=0, switch=0), c("b", rk=0, prio=1, switch=0)])
    assert writes == []


def test_negative_priorities_never_count_as_active() -> None:
    writes = by_key(feedback_pass([c("a", rk=3, prio=-1, switch=0), c("b", rk=3, prio=-1, switch=0)]))
    assert writes["a"] == FeedbackWrite("a", recent_kernel=2, utilization_switch=None)


inputs = st.lists(
    st.builds(
        FeedbackInput,
        key=st.integers(0, 10_000),
        uuids=st.lists(st.sampled_from([GPU_A, GPU_B]), max_size=2, unique=True).map(tuple),
        priority=st.integers(-1, 3),
        recent_kernel=st.integers(-1, 3),
        utilization_switch=st.integers(0, 1),
    ),
    max_size=8,
    unique_by=lambda i: i.key,
)


@given(inputs)
def test_writes_are_bounded_and_only_change_values(containers: list[FeedbackInput]) -> None:
    old = {i.key: i for i in containers}
    for write in feedback_pass(containers):
        before = old[write.key]
        if write.recent_kernel is not None:
            assert write.recent_kernel != before.recent_kernel
            assert -1 <= write.recent_kernel < max(before.recent_kernel, 1)
        if write.utilization_switch is not None:
            assert write.utilization_switch in (0, 1)
            assert write.utilization_switch != before.utilization_switch
