"""Rule 7 (namespace quota pre-check, docs/hami-wire.md#quota-cases) and rule 6b (requests no registered
card could hold), as pure decisions over plain views."""

from __future__ import annotations

from typing import Any

import pytest
from webhook_builders import CORES, GPU, MEM, ctr, gpu_ctr, pod, res

from services.common.device_config import NvidiaConfig
from services.webhook.mutate import MutationPolicy, NodeGpus, Outcome, QuotaEntry, admit_pod

DEFAULT = MutationPolicy()
# 7.7: quota gpumem Used 1000 Limit 2000, cores Used 200 Limit 400.
QUOTA = {MEM: QuotaEntry(limit=2000, used=1000), CORES: QuotaEntry(limit=400, used=200)}


def nvidia(**keys: Any) -> MutationPolicy:
    return MutationPolicy(nvidia=NvidiaConfig.model_validate(keys))


def mem_ctr(name: str, gpus: int, mem: int, **kw: Any) -> dict[str, Any]:
    return ctr(name, limits=res(gpu=str(gpus), mem=str(mem)), **kw)


@pytest.mark.parametrize(
    ("containers", "init", "fits"),
    [
        pytest.param([mem_ctr("a", 1, 100)], (), True, id="app-1x100"),
        pytest.param([mem_ctr("a", 1, 1024)], (), False, id="app-1x1024"),
        pytest.param([mem_ctr("a", 2, 1024)], (), False, id="app-2x1024"),
        pytest.param([mem_ctr("a", 2, 400)], (), True, id="app-2x400"),
        pytest.param(
            [mem_ctr("a", 1, 500)], (mem_ctr("i1", 1, 800), mem_ctr("i2", 1, 800)), True, id="init-max"
        ),
        pytest.param([mem_ctr("a", 1, 100)], (mem_ctr("i", 1, 1500),), False, id="init-1500"),
        pytest.param([mem_ctr("a", 1, 600), mem_ctr("b", 1, 500)], (), False, id="apps-add-up"),
        pytest.param([mem_ctr("a", 1, 1000)], (), True, id="exactly-at-limit"),
    ],
)
def test_fit_resource_quota_fixture(
    containers: list[dict[str, Any]], init: tuple[dict[str, Any], ...], fits: bool
) -> None:
    decision = admit_pod(pod(*containers, init=init), DEFAULT, quota=QUOTA)
    if fits:
        assert decision.allowed
    else:
        assert (decision.outcome, decision.code, decision.message) == (
            Outcome.DENIED,
            403,
            "exceeding resource quota",
        )
        assert decision.warnings and "limits.nvidia.com/gpumem" in decision.warnings[0]


def test_explicit_zero_limit_blocks_any_usage() -> None:
    quota = {MEM: QuotaEntry(limit=0, used=0)}
    assert admit_pod(pod(mem_ctr("a", 1, 1)), DEFAULT, quota=quota).message == "exceeding resource quota"


def test_cores_quota_counts_the_exclusive_default() -> None:
    # gpu=1 alone becomes gpucores 100 (rule 4e) before the quota is checked.
    assert admit_pod(pod(gpu_ctr(gpu="2")), DEFAULT, quota=QUOTA).allowed  # 200 + 200 <= 400
    decision = admit_pod(pod(gpu_ctr(gpu="3")), DEFAULT, quota=QUOTA)  # 200 + 300 > 400
    assert decision.message == "exceeding resource quota"
    assert "limits.nvidia.com/gpucores" in decision.warnings[0]


def test_memory_factor_scales_the_limit_and_the_request() -> None:
    policy = nvidia(memoryFactor=2)  # limit 2000 -> 4000 in scaled units; used 1000
    assert admit_pod(pod(mem_ctr("a", 1, 1000)), policy, quota=QUOTA).allowed  # 1000 + 2000 <= 4000
    decision = admit_pod(pod(mem_ctr("a", 1, 1600)), policy, quota=QUOTA)  # 1000 + 3200 > 4000
    assert decision.message == "exceeding resource quota"
    assert "memoryFactor 2" in decision.warnings[0]


def test_native_sidecars_count_with_the_app_containers() -> None:
    plain_init = pod(mem_ctr("a", 1, 500), init=(mem_ctr("i", 1, 800),))
    sidecar = pod(mem_ctr("a", 1, 500), init=(mem_ctr("i", 1, 800, restart_policy="Always"),))
    assert admit_pod(plain_init, DEFAULT, quota=QUOTA).allowed  # max(800, 500) = 800
    assert not admit_pod(sidecar, DEFAULT, quota=QUOTA).allowed  # 800 + 500 = 1300


@pytest.mark.parametrize(
    "quota",
    [
        pytest.param({}, id="no-quota-in-namespace"),
        pytest.param({CORES: QuotaEntry(limit=400, used=0)}, id="only-cores-limited"),
    ],
)
def test_untracked_resources_never_deny(quota: dict[str, QuotaEntry]) -> None:
    assert admit_pod(pod(mem_ctr("a", 1, 10**6)), DEFAULT, quota=quota).allowed


def test_percentage_only_requests_count_no_memory() -> None:
    quota = {MEM: QuotaEntry(limit=10, used=10)}
    assert admit_pod(pod(gpu_ctr(gpu="1", pct="50", cores="10")), DEFAULT, quota=quota).allowed


def test_non_gpu_pod_never_exceeds_quota_even_when_the_namespace_is_over() -> None:
    quota = {MEM: QuotaEntry(limit=100, used=5000)}
    assert admit_pod(pod(ctr()), DEFAULT, quota=quota).allowed


def test_unknown_quota_skips_the_check_and_says_so() -> None:
    decision = admit_pod(pod(mem_ctr("a", 1, 10**6)), MutationPolicy(reject_unplaceable=False), quota=None)
    assert decision.allowed
    assert any("quota" in note for note in decision.notes)


def test_quota_is_checked_after_every_earlier_denial() -> None:
    over = {MEM: QuotaEntry(limit=1, used=1)}
    assert (
        admit_pod(pod(mem_ctr("a", 1, 5), node="n"), DEFAULT, quota=over).message == "pod has node assigned"
    )


# --- rule 6b: requests no registered card could ever hold ---------------------------------------------------

INVENTORY = [
    NodeGpus("small", (16384, 16384)),
    NodeGpus("big", (40960, 40960, 40960, 40960)),
    NodeGpus("mixed", (81920, 24576)),
]


@pytest.mark.parametrize(
    ("limits", "policy", "message"),
    [
        pytest.param(
            res(gpu="1", mem="100000"),
            DEFAULT,
            "container main requests nvidia.com/gpumem 100000 MiB per GPU but the largest registered GPU has "
            "81920 MiB",
            id="gpumem-too-big",
        ),
        pytest.param(
            res(gpu="1", mem="16Gi"),
            DEFAULT,
            "container main requests nvidia.com/gpumem 16Gi (= 17179869184 MiB) per GPU but the largest "
            "registered GPU has 81920 MiB (gpumem is a number of MiB)",
            id="gpumem-with-unit",
        ),
        pytest.param(
            res(gpu="1", mem="50000"),
            nvidia(memoryFactor=2),
            "container main requests nvidia.com/gpumem 50000 (x2 memoryFactor = 100000 MiB) per GPU but the "
            "largest registered GPU has 81920 MiB",
            id="memory-factor",
        ),
        pytest.param(
            res(gpu="5"),
            DEFAULT,
            "container main requests 5 nvidia.com/gpu but the largest registered node has 4 GPUs",
            id="too-many-gpus",
        ),
        pytest.param(
            res(gpu="1", cores="150"),
            DEFAULT,
            "container main requests nvidia.com/gpucores 150: that is a percentage of one GPU's compute, at "
            "most 100",
            id="cores-over-100",
        ),
        pytest.param(
            res(gpu="2", mem="50000"),
            DEFAULT,
            "container main requests 2 nvidia.com/gpu with nvidia.com/gpumem 50000 MiB each but no "
            "registered "
            "node has 2 GPUs that large (at most 1)",
            id="no-node-with-enough-large-cards",
        ),
    ],
)
def test_unplaceable_requests_are_denied_with_the_reason(
    limits: dict[str, Any], policy: MutationPolicy, message: str
) -> None:
    decision = admit_pod(pod(ctr(limits=limits)), policy, inventory=INVENTORY)
    assert (decision.outcome, decision.code, decision.message) == (Outcome.DENIED, 403, message)


def test_unplaceable_names_the_offending_container() -> None:
    obj = pod(gpu_ctr("ok", gpu="1"), init=(gpu_ctr("loader", gpu="1", mem="90000"),))
    assert admit_pod(obj, DEFAULT, inventory=INVENTORY).message.startswith("container loader requests")


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(res(gpu="4", mem="40960"), id="exactly-the-big-node"),
        pytest.param(res(gpu="1", mem="81920"), id="largest-card"),
        pytest.param(res(gpu="1", pct="100"), id="percentage"),
        pytest.param(res(gpu="1", cores="100"), id="cores-100"),
        pytest.param(res(gpu="4"), id="whole-cards"),
    ],
)
def test_placeable_requests_pass(limits: dict[str, Any]) -> None:
    assert admit_pod(pod(ctr(limits=limits)), DEFAULT, inventory=INVENTORY).allowed


@pytest.mark.parametrize(
    ("inventory", "note"),
    [
        pytest.param(None, "not synced", id="not-synced"),
        pytest.param([], "no registered GPU node", id="no-nodes"),
    ],
)
def test_unknown_inventory_allows_and_notes_it(inventory: list[NodeGpus] | None, note: str) -> None:
    decision = admit_pod(pod(gpu_ctr(gpu="64", mem="10000000")), DEFAULT, inventory=inventory)
    assert decision.allowed
    assert any(note in n for n in decision.notes)


def test_unplaceable_check_can_be_turned_off() -> None:
    policy = MutationPolicy(reject_unplaceable=False)
    assert admit_pod(pod(gpu_ctr(gpu="64")), policy, inventory=INVENTORY).allowed


def test_default_memory_is_judged_like_gpumem() -> None:
    decision = admit_pod(pod(gpu_ctr(gpu="1")), nvidia(defaultMemory=100000), inventory=INVENTORY)
    assert decision.message == (
        "container main requests 100000 MiB (defaultMemory) per GPU but the largest registered GPU has "
        "81920 MiB"
    )


def test_unplaceable_comes_before_quota() -> None:
    quota = {MEM: QuotaEntry(limit=1, used=1)}
    decision = admit_pod(pod(gpu_ctr(gpu="9", mem="5")), DEFAULT, inventory=INVENTORY, quota=quota)
    assert decision.message.endswith("has 4 GPUs")


def test_non_gpu_containers_are_not_judged() -> None:
    obj = pod(gpu_ctr(gpu="1"), ctr("web", limits={"cpu": "64", GPU + "x": "9"}))
    assert admit_pod(obj, DEFAULT, inventory=INVENTORY).allowed
