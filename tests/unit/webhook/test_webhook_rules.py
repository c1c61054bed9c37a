"""Every rule of the mutating webhook (spec section 4), in order, and the webhook rows of 7.2 and 7.7."""

from __future__ import annotations

from typing import Any

import pytest
from webhook_builders import (
    CORES,
    GPU,
    MEM,
    PCT,
    PRIORITY,
    container_of,
    ctr,
    env_of,
    gpu_ctr,
    patched,
    pod,
    res,
)

from services.common.device_config import NvidiaConfig
from services.webhook.mutate import Decision, MutationPolicy, Outcome, admit_pod

DEFAULT = MutationPolicy()


def nvidia(**keys: Any) -> MutationPolicy:
    return MutationPolicy(nvidia=NvidiaConfig.model_validate(keys))


def admit(obj: Any, policy: MutationPolicy = DEFAULT, **kw: Any) -> tuple[Decision, Any]:
    """The decision and the pod as the API server would store it (patch applied independently)."""
    decision = admit_pod(obj, policy, **kw)
    return decision, patched(obj, decision.patch)


# --- rule 1: decode failures -> errored 400 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        pytest.param(None, "got null", id="null"),
        pytest.param([], "got array", id="array"),
        pytest.param("pod", "got string", id="string"),
        pytest.param({"kind": "Deployment", "spec": {}}, "expected kind Pod", id="not-a-pod"),
        pytest.param({"metadata": []}, "metadata: expected object", id="metadata-array"),
        pytest.param({"metadata": {"labels": {"a": 1}}}, "metadata.labels[a]", id="label-number"),
        pytest.param({"spec": []}, "spec: expected object", id="spec-array"),
        pytest.param({"spec": {"containers": {}}}, "spec.containers: expected array", id="containers-obj"),
        pytest.param(
            {"spec": {"containers": [1]}}, "spec.containers[0]: expected object", id="container-num"
        ),
        pytest.param({"spec": {"schedulerName": 5, "containers": [ctr()]}}, "spec.schedulerName", id="sched"),
        pytest.param({"spec": {"nodeName": True, "containers": [ctr()]}}, "spec.nodeName", id="node-bool"),
        pytest.param(pod(ctr(limits={GPU: "one"})), "resources.limits[nvidia.com/gpu]", id="bad-quantity"),
        pytest.param(pod(ctr(limits={"cpu": True})), "expected a quantity, got boolean", id="bool-quantity"),
        pytest.param(pod(ctr(requests={GPU: [1]})), "resources.requests[nvidia.com/gpu]", id="list-quantity"),
        pytest.param(pod(ctr(env=[{"name": 3}])), "env[0].name", id="env-name"),
        pytest.param(pod(ctr(env=["X=1"])), "env[0]: expected object", id="env-string"),
        pytest.param(pod(ctr(privileged="yes")), "securityContext.privileged", id="privileged-string"),
        pytest.param(pod(ctr(), init=(ctr("i", limits="x"),)), "initContainers[0].resources", id="init"),  # type: ignore[arg-type]
    ],
)
def test_undecodable_pod_is_errored_400(obj: Any, fragment: str) -> None:
    decision = admit_pod(obj, DEFAULT)
    assert decision.outcome is Outcome.ERRORED
    assert decision.code == 400
    assert decision.message.startswith("cannot decode the pod: ")
    assert fragment in decision.message


def test_null_optional_fields_decode_like_go_zero_values() -> None:
    obj = pod(ctr(limits=None, env=None))
    obj["spec"]["initContainers"] = None
    obj["spec"]["containers"][0]["resources"] = {"limits": None, "requests": None}
    decision = admit_pod(obj, DEFAULT)
    assert decision.allowed
    assert decision.patch == ()


# --- rule 2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(pod(), id="empty-containers"),
        pytest.param({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, id="no-spec"),
        pytest.param({"spec": {"containers": None}}, id="null-containers"),
        pytest.param(pod(init=(gpu_ctr("init", gpu="1"),)), id="only-init-containers"),
    ],
)
def test_pod_without_containers_is_denied(obj: dict[str, Any]) -> None:
    decision = admit_pod(obj, DEFAULT)
    assert (decision.outcome, decision.code, decision.message) == (
        Outcome.DENIED,
        403,
        "pod has no containers",
    )


# --- rule 3: another scheduler ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "configured", "force", "expected_scheduler"),
    [
        pytest.param("my-scheduler", "hami-scheduler", True, None, id="other-scheduler"),
        pytest.param("default-scheduler", "hami-scheduler", False, None, id="default-without-force"),
        pytest.param("my-scheduler", "", True, None, id="other-scheduler-none-configured"),
        pytest.param("default-scheduler", "hami-scheduler", True, "hami-scheduler", id="default-with-force"),
        pytest.param("hami-scheduler", "hami-scheduler", False, "hami-scheduler", id="already-ours"),
        pytest.param(None, "hami-scheduler", False, "hami-scheduler", id="unset"),
        pytest.param("", "hami-scheduler", False, "hami-scheduler", id="empty"),
        pytest.param("default-scheduler", "", True, "default-scheduler", id="none-configured-keeps-default"),
        pytest.param("kube-vgpu", "kube-vgpu", True, "kube-vgpu", id="custom-name"),
    ],
)
def test_scheduler_name(
    current: str | None, configured: str, force: bool, expected_scheduler: str | None
) -> None:
    obj = pod(gpu_ctr(gpu="1"), scheduler=current)
    policy = MutationPolicy(scheduler_name=configured, force_overwrite_default_scheduler=force)
    decision, result = admit(obj, policy)
    assert decision.allowed
    if expected_scheduler is None:
        assert decision.message == "pod already has different scheduler assigned"
        assert decision.patch == ()
        assert not decision.has_resource
    else:
        assert decision.message == ""
        assert result["spec"]["schedulerName"] == expected_scheduler
        assert decision.has_resource


def test_other_scheduler_is_allowed_before_any_other_check() -> None:
    obj = pod(gpu_ctr(gpu="1", pct="500"), ctr("x", privileged=True), scheduler="my-scheduler", node="n1")
    decision = admit_pod(obj, DEFAULT)
    assert decision.allowed
    assert decision.message == "pod already has different scheduler assigned"


# --- rule 4a: percentage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "requests", "shown"),
    [
        pytest.param(res(gpu="1", pct="150"), None, "150", id="150"),
        pytest.param(res(gpu="1", pct="101"), None, "101", id="101"),
        pytest.param(res(gpu="1", pct="-1"), None, "-1", id="negative"),
        pytest.param(res(gpu="1", pct="50.5"), None, "50.5", id="fraction"),
        pytest.param(res(gpu="1", pct="500m"), None, "500m", id="milli"),
        pytest.param(res(gpu="1", pct=250), None, "250", id="bare-number"),
        pytest.param(res(gpu="1"), res(pct="200"), "200", id="in-requests"),
        pytest.param(res(pct="120"), None, "120", id="without-gpu"),
    ],
)
def test_percentage_outside_0_100_is_errored_500(
    limits: dict[str, Any], requests: dict[str, Any] | None, shown: str
) -> None:
    decision = admit_pod(pod(ctr("app", limits=limits, requests=requests)), DEFAULT)
    assert (decision.outcome, decision.code) == (Outcome.ERRORED, 500)
    assert decision.message == (
        f"invalid nvidia.com/gpumem-percentage value {shown} in container app: "
        "must be an integer between 0 and 100"
    )


@pytest.mark.parametrize("value", ["0", "1", "50", "100", 100])
def test_percentage_in_range_is_accepted(value: Any) -> None:
    assert admit_pod(pod(gpu_ctr(gpu="1", pct=value)), DEFAULT).allowed


def test_percentage_error_names_the_init_container_first() -> None:
    obj = pod(gpu_ctr("app", gpu="1", pct="300"), init=(gpu_ctr("setup", gpu="1", pct="200"),))
    assert "in container setup:" in admit_pod(obj, DEFAULT).message


def test_percentage_uses_the_configured_resource_name() -> None:
    policy = nvidia(resourceMemoryPercentageName="example.com/mem-pct")
    decision = admit_pod(pod(ctr(limits={GPU: "1", "example.com/mem-pct": "300"})), policy)
    assert decision.message.startswith("invalid example.com/mem-pct value 300 in container main")


# --- rule 4b: priority -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "env"), [("0", "0"), ("1", "1"), (1, "1"), ("500m", "1"), ("2", "2")])
def test_priority_limit_becomes_cuda_task_priority(value: Any, env: str) -> None:
    _, result = admit(pod(gpu_ctr(gpu="1", priority=value)))
    assert env_of(container_of(result))["CUDA_TASK_PRIORITY"] == env


def test_priority_only_read_from_limits() -> None:
    _, result = admit(pod(ctr(limits=res(gpu="1"), requests=res(priority="1"))))
    assert "CUDA_TASK_PRIORITY" not in env_of(container_of(result))


def test_priority_replaces_an_existing_variable_instead_of_duplicating_it() -> None:
    env = [{"name": "A", "value": "a"}, {"name": "CUDA_TASK_PRIORITY", "value": "9"}]
    _, result = admit(pod(ctr(limits=res(gpu="1", priority="1"), env=env)))
    assert container_of(result)["env"] == [
        {"name": "A", "value": "a"},
        {"name": "CUDA_TASK_PRIORITY", "value": "1"},
    ]


def test_priority_env_keeps_existing_variables_first() -> None:
    _, result = admit(pod(ctr(limits=res(gpu="1", priority="0"), env=[{"name": "A", "value": "a"}])))
    assert container_of(result)["env"] == [
        {"name": "A", "value": "a"},
        {"name": "CUDA_TASK_PRIORITY", "value": "0"},
    ]


# --- rule 4c: gpuCorePolicy --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy_name", ["force", "disable"])
def test_core_policy_env_goes_to_every_container(policy_name: str) -> None:
    obj = pod(gpu_ctr("gpu", gpu="1"), ctr("sidecar"), init=(ctr("setup"),))
    _, result = admit(obj, nvidia(gpuCorePolicy=policy_name))
    for key, index in (("containers", 0), ("containers", 1), ("initContainers", 0)):
        assert env_of(container_of(result, index, key)) == {"GPU_CORE_UTILIZATION_POLICY": policy_name}


def test_core_policy_default_adds_nothing() -> None:
    _, result = admit(pod(gpu_ctr(gpu="1")))
    assert "env" not in container_of(result)


def test_core_policy_env_on_non_gpu_pod_keeps_its_scheduler() -> None:
    decision, result = admit(pod(ctr()), nvidia(gpuCorePolicy="force"))
    assert decision.allowed and not decision.has_resource
    assert env_of(container_of(result)) == {"GPU_CORE_UTILIZATION_POLICY": "force"}
    assert result["spec"]["schedulerName"] == "default-scheduler"


# --- rule 4d: default GPU number ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "keys", "expected_gpu"),
    [
        pytest.param(res(mem="1000"), {}, "1", id="gpumem-only"),
        pytest.param(res(cores="30"), {}, "1", id="gpucores-only"),
        pytest.param(res(pct="50"), {}, "1", id="percentage-only"),
        pytest.param(res(mem="1000"), {"defaultGPUNum": 2}, "2", id="defaultGPUNum-2"),
        pytest.param(res(gpu="3", mem="1000"), {}, "3", id="explicit-count-kept"),
        pytest.param(res(mem="1000"), {"defaultGPUNum": 0}, None, id="disabled"),
    ],
)
def test_default_gpu_number(limits: dict[str, Any], keys: dict[str, Any], expected_gpu: str | None) -> None:
    decision, result = admit(pod(ctr(limits=limits)), nvidia(**keys))
    assert decision.allowed
    assert container_of(result)["resources"]["limits"].get(GPU) == expected_gpu
    assert decision.has_resource is (expected_gpu is not None)
    expected_scheduler = "hami-scheduler" if expected_gpu else "default-scheduler"
    assert result["spec"]["schedulerName"] == expected_scheduler


def test_gpu_count_in_requests_only_is_a_gpu_request() -> None:
    # The scheduler reads limits then requests (docs/hami-wire.md#request-parsing); the webhook agrees on
    # which pods it routes.
    decision, result = admit(pod(ctr(requests=res(gpu="1"))))
    assert decision.has_resource
    assert result["spec"]["schedulerName"] == "hami-scheduler"


def test_gpu_count_zero_still_routes_the_pod_like_hami() -> None:
    decision, _ = admit(pod(gpu_ctr(gpu="0")))
    assert decision.has_resource


def test_custom_resource_names_are_used() -> None:
    policy = nvidia(resourceCountName="example.com/vgpu", resourceMemoryName="example.com/vmem")
    decision, result = admit(pod(ctr(limits={"example.com/vmem": "1000"})), policy)
    assert container_of(result)["resources"]["limits"] == {
        "example.com/vmem": "1000",
        "example.com/vgpu": "1",
    }
    assert decision.has_resource


# --- rule 4e: exclusive-core default (docs/hami-wire.md#exclusive-core-cases) -------------------------------


@pytest.mark.parametrize(
    ("limits", "requests", "expected_cores"),
    [
        pytest.param(res(gpu="1", pct="100"), None, "100", id="pct=100-limits"),
        pytest.param(res(gpu="1"), res(pct="100"), "100", id="pct=100-requests-only"),
        pytest.param(res(gpu="1", pct="50"), None, None, id="pct=50"),
        pytest.param(res(gpu="1"), None, "100", id="gpu-only"),
        pytest.param(res(gpu="1", cores="70"), None, "70", id="gpucores=70-limits"),
        pytest.param(res(gpu="1"), res(cores="70"), None, id="gpucores=70-requests"),
        pytest.param(res(gpu="1", mem="1000"), None, None, id="gpumem"),
        pytest.param(res(gpu="2", pct="100", mem="1000"), None, "100", id="pct=100-and-gpumem"),
        pytest.param(res(pct="100"), None, "100", id="pct=100-default-gpu-added"),
        pytest.param(res(gpu="1", pct="0"), None, None, id="pct=0"),
        pytest.param(None, res(gpu="1"), "100", id="gpu-in-requests"),
    ],
)
def test_exclusive_core_default(
    limits: dict[str, Any] | None, requests: dict[str, Any] | None, expected_cores: str | None
) -> None:
    decision, result = admit(pod(ctr(limits=limits, requests=requests)))
    assert decision.allowed
    resources = container_of(result)["resources"]
    assert (resources.get("limits") or {}).get(CORES) == expected_cores
    if requests and CORES in requests:
        assert resources["requests"][CORES] == requests[CORES]


def test_exclusive_core_default_not_applied_with_default_memory() -> None:
    # With defaultMemory the container gets that much memory, not the whole card: not exclusive.
    _, result = admit(pod(gpu_ctr(gpu="1")), nvidia(defaultMemory=512))
    assert CORES not in container_of(result)["resources"]["limits"]


def test_exclusive_core_default_applies_to_init_containers_too() -> None:
    _, result = admit(pod(ctr(), init=(gpu_ctr("setup", gpu="1"),)))
    assert container_of(result, 0, "initContainers")["resources"]["limits"][CORES] == "100"


# --- rule 4f: runtimeClassName -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "pod_runtime", "configured", "expected"),
    [
        pytest.param([gpu_ctr(gpu="1")], None, "nvidia", "nvidia", id="set"),
        pytest.param([gpu_ctr(gpu="1")], "kata", "nvidia", "kata", id="kept"),
        pytest.param([gpu_ctr(gpu="1")], "", "nvidia", "nvidia", id="empty-replaced"),
        pytest.param([ctr()], None, "nvidia", None, id="non-gpu"),
        pytest.param([gpu_ctr(gpu="1")], None, "", None, id="not-configured"),
    ],
)
def test_runtime_class_name(
    containers: list[dict[str, Any]], pod_runtime: str | None, configured: str, expected: str | None
) -> None:
    _, result = admit(pod(*containers, runtime=pod_runtime), nvidia(runtimeClassName=configured))
    assert result["spec"].get("runtimeClassName") == expected


# --- rule 4g: overwriteEnv ---------------------------------------------------------------------------------


def test_overwrite_env_hides_gpus_from_non_gpu_containers() -> None:
    obj = pod(gpu_ctr("gpu", gpu="1"), ctr("web"), init=(ctr("setup"),))
    _, result = admit(obj, nvidia(overwriteEnv=True))
    assert env_of(container_of(result, 1)) == {"NVIDIA_VISIBLE_DEVICES": "none"}
    assert env_of(container_of(result, 0, "initContainers")) == {"NVIDIA_VISIBLE_DEVICES": "none"}
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(container_of(result, 0))


def test_overwrite_env_on_a_non_gpu_pod_patches_only_env() -> None:
    obj = pod(ctr("web"))
    decision = admit_pod(obj, nvidia(overwriteEnv=True))
    assert decision.allowed and not decision.has_resource
    assert list(decision.patch) == [
        {
            "op": "add",
            "path": "/spec/containers/0/env",
            "value": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}],
        }
    ]


# --- rule 5: privileged -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(
            pod(gpu_ctr("cuda", gpu="1") | {"securityContext": {"privileged": True}}),
            "container cuda is privileged",
            id="app",
        ),
        pytest.param(
            pod(gpu_ctr(gpu="1"), ctr("debug", privileged=True)),
            "container debug is privileged",
            id="other-app",
        ),
        pytest.param(
            pod(gpu_ctr(gpu="1"), init=(ctr("setup", privileged=True),)),
            "container setup is privileged",
            id="init",
        ),
    ],
)
def test_privileged_container_in_gpu_pod_is_denied(obj: dict[str, Any], message: str) -> None:
    decision = admit_pod(obj, DEFAULT)
    assert (decision.outcome, decision.code, decision.message) == (Outcome.DENIED, 403, message)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(pod(ctr(privileged=True)), id="non-gpu-pod"),
        pytest.param(pod(gpu_ctr(gpu="1"), ctr("debug", privileged=False)), id="privileged-false"),
    ],
)
def test_privileged_allowed_without_gpu_or_when_false(obj: dict[str, Any]) -> None:
    assert admit_pod(obj, DEFAULT).allowed


# --- rule 6: scheduler name and nodeName --------------------------------------------------------------------


def test_gpu_pod_with_node_assigned_is_denied() -> None:
    decision = admit_pod(pod(gpu_ctr(gpu="1"), node="node-1"), DEFAULT)
    assert (decision.outcome, decision.code, decision.message) == (
        Outcome.DENIED,
        403,
        "pod has node assigned",
    )


def test_non_gpu_pod_with_node_assigned_is_allowed() -> None:
    decision = admit_pod(pod(ctr(), node="node-1"), DEFAULT)
    assert decision.allowed and decision.patch == ()


def test_node_assigned_is_fine_when_no_scheduler_is_configured() -> None:
    decision = admit_pod(pod(gpu_ctr(gpu="1"), node="node-1"), MutationPolicy(scheduler_name=""))
    assert decision.allowed


# --- docs/hami-wire.md#webhook-cases --------------------------------------------------------------------


def test_hami_webhook_fixture_rows() -> None:
    denied = admit_pod(pod(gpu_ctr(gpu="1"), node="n1"), DEFAULT)
    assert (denied.allowed, denied.message) == (False, "pod has node assigned")

    other = admit_pod(pod(gpu_ctr(gpu="1"), scheduler="volcano"), DEFAULT)
    assert (other.allowed, other.patch) == (True, ())

    empty = admit_pod(pod(), DEFAULT)
    assert (empty.allowed, empty.message) == (False, "pod has no containers")

    plain = admit_pod(pod(ctr(limits={"cpu": "1", "memory": "1Gi"})), DEFAULT)
    assert (plain.allowed, plain.patch, plain.message) == (True, (), "")

    forced = admit_pod(pod(gpu_ctr(gpu="1", mem="1000")), DEFAULT)
    assert forced.allowed
    assert list(forced.patch) == [{"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"}]


# --- rule 8: the patch -----------------------------------------------------------------------------------


def test_gpu_pod_patch_is_exactly_the_changes() -> None:
    decision = admit_pod(pod(gpu_ctr(gpu="1")), DEFAULT)
    assert list(decision.patch) == [
        {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores", "value": "100"},
        {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"},
    ]


def test_patch_adds_missing_objects_whole() -> None:
    obj = pod(ctr(limits=None), scheduler=None)
    obj["spec"]["containers"][0]["resources"] = {"requests": {MEM: "100"}}
    decision = admit_pod(obj, nvidia(gpuCorePolicy="force"))
    assert list(decision.patch) == [
        {"op": "add", "path": "/spec/containers/0/resources/limits", "value": {GPU: "1"}},
        {
            "op": "add",
            "path": "/spec/containers/0/env",
            "value": [{"name": "GPU_CORE_UTILIZATION_POLICY", "value": "force"}],
        },
        {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"},
    ]


def test_patch_replaces_null_fields() -> None:
    obj = pod(ctr(limits=None))
    obj["spec"]["containers"][0]["resources"] = {"limits": None, "requests": {PCT: "100"}}
    decision, result = admit(obj)
    assert result["spec"]["containers"][0]["resources"]["limits"] == {GPU: "1", CORES: "100"}
    assert {
        "op": "replace",
        "path": "/spec/containers/0/resources/limits",
        "value": {GPU: "1", CORES: "100"},
    } in decision.patch


def test_patch_applied_to_the_original_gives_the_mutated_pod() -> None:
    obj = pod(
        ctr("a", limits=res(gpu="2", mem="3000", priority="1"), env=[{"name": "X", "value": "1"}]),
        ctr("b", limits=res(pct="100")),
        ctr("c"),
        init=(ctr("i", limits=res(cores="20")),),
        scheduler=None,
    )
    policy = nvidia(gpuCorePolicy="force", overwriteEnv=True, runtimeClassName="nvidia")
    decision, result = admit(obj, policy)
    assert decision.allowed
    spec = result["spec"]
    assert spec["schedulerName"] == "hami-scheduler"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["initContainers"][0]["resources"]["limits"] == {CORES: "20", GPU: "1"}
    a, b, c = spec["containers"]
    assert a["resources"]["limits"] == res(gpu="2", mem="3000", priority="1")
    assert env_of(a) == {"X": "1", "CUDA_TASK_PRIORITY": "1", "GPU_CORE_UTILIZATION_POLICY": "force"}
    assert b["resources"]["limits"] == {PCT: "100", GPU: "1", CORES: "100"}
    assert env_of(c) == {"GPU_CORE_UTILIZATION_POLICY": "force", "NVIDIA_VISIBLE_DEVICES": "none"}
    assert result["metadata"] == obj["metadata"]


def test_the_input_pod_is_not_modified() -> None:
    obj = pod(gpu_ctr(gpu="1"))
    before = repr(obj)
    admit_pod(obj, nvidia(gpuCorePolicy="force", runtimeClassName="x"))
    assert repr(obj) == before


# --- hami.io/webhook=ignore ------------------------------------------------------------------------------


def test_pod_labelled_ignore_is_left_alone() -> None:
    obj = pod(gpu_ctr(gpu="1"), node="n", labels={"hami.io/webhook": "ignore"})
    decision = admit_pod(obj, DEFAULT)
    assert decision.allowed and decision.patch == ()
    assert decision.message == "pod is labelled hami.io/webhook=ignore"


def test_priority_and_default_gpu_work_on_bare_number_quantities() -> None:
    _, result = admit(pod(ctr(limits={MEM: 1000, PRIORITY: 1})))
    limits = container_of(result)["resources"]["limits"]
    assert limits[GPU] == "1"
    assert env_of(container_of(result)) == {"CUDA_TASK_PRIORITY": "1"}


# --- (kube-vgpu) count, memory and cores must be whole numbers in range -----------------------------------


@pytest.mark.parametrize(
    ("limits", "requests", "resource", "shown", "bound"),
    [
        pytest.param(res(gpu="1", mem="-5"), None, MEM, "-5", "of at least 0", id="negative-gpumem"),
        pytest.param(res(gpu="0.5"), None, GPU, "0.5", "between 0 and 2147483647", id="half-a-gpu"),
        pytest.param(res(gpu="500m"), None, GPU, "500m", "between 0 and 2147483647", id="milli-gpu"),
        pytest.param(res(gpu="1e300"), None, GPU, "1e300", "between 0 and 2147483647", id="absurd-gpu"),
        pytest.param(res(gpu="-1"), None, GPU, "-1", "between 0 and 2147483647", id="negative-gpu"),
        pytest.param(
            res(gpu="1", cores="-30"), None, CORES, "-30", "between 0 and 2147483647", id="neg-cores"
        ),
        pytest.param(
            res(gpu="1", cores="30.5"), None, CORES, "30.5", "between 0 and 2147483647", id="frac-cores"
        ),
        pytest.param(res(gpu="1"), res(mem="1.5"), MEM, "1.5", "of at least 0", id="in-requests"),
    ],
)
def test_bad_gpu_quantities_are_denied_naming_container_and_resource(
    limits: dict[str, Any], requests: dict[str, Any] | None, resource: str, shown: str, bound: str
) -> None:
    """Issue 17: these used to be read as "no GPU request" and the pod was admitted for a CPU node."""
    decision = admit_pod(pod(ctr("trainer", limits=limits, requests=requests)), DEFAULT)
    assert decision.outcome is Outcome.DENIED
    assert decision.message == (
        f"invalid {resource} value {shown} in container trainer: must be a whole number {bound}"
    )


@pytest.mark.parametrize(
    "limits",
    [
        res(gpu="1"),
        res(gpu="0"),
        res(gpu="2", mem="4096", cores="30"),
        res(gpu="1", cores="150"),
        res(mem="16Gi"),
    ],
)
def test_whole_quantities_in_range_pass_this_check(limits: dict[str, Any]) -> None:
    decision = admit_pod(pod(ctr("trainer", limits=limits)), DEFAULT)
    assert "must be a whole number" not in decision.message
