"""The store's ordered keys and label/field indexes: a list must answer exactly what a full sorted scan
would, after any mix of creates, updates, deletes and a dump/load round trip."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from services.common.selectors import parse_field_selector, parse_label_selector
from sim.kubelocal.resources import NAMESPACES as NS_RESOURCE
from sim.kubelocal.resources import NODES, PODS
from sim.kubelocal.store import Store, WatchFilter, new_uid, now_timestamp

NAMESPACES = ("default", "kube-system", "team-a", "team-a1")
NODE_NAMES = ("n1", "n2", "n3", "")
LABEL_SELECTORS = (
    "",
    "app=web",
    "app==db",
    "app in (web,db)",
    "app!=web",
    "hami.io/vgpu-node=n1",
    "hami.io/vgpu-node=n2,app=web",
    "hami.io/vgpu-node in (n1,n3)",
    "hami.io/vgpu-node",
    "!hami.io/vgpu-node",
    "app=nothing",
)
FIELD_SELECTORS = (
    "",
    "spec.nodeName=n1",
    "spec.nodeName=",
    "spec.nodeName!=n2",
    "spec.nodeName=n3,status.phase=Running",
)


def _pod(namespace: str, name: str, rng: random.Random) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if rng.random() < 0.7:
        labels["app"] = rng.choice(("web", "db"))
    node = rng.choice(NODE_NAMES)
    if node and rng.random() < 0.8:
        labels["hami.io/vgpu-node"] = node
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": new_uid(),
            "creationTimestamp": now_timestamp(),
            "labels": labels,
        },
        "spec": spec,
        "status": {"phase": rng.choice(("Pending", "Running"))},
    }


def _brute(store: Store, flt: WatchFilter) -> list[dict[str, Any]]:
    objects = store._objects[flt.resource.key].objects
    return [obj for _, obj in sorted(objects.items()) if flt.matches(obj)]


def _check(store: Store) -> None:
    for namespace in (None, *NAMESPACES):
        for labels in LABEL_SELECTORS:
            for fields in FIELD_SELECTORS:
                flt = WatchFilter(PODS, namespace, parse_label_selector(labels), parse_field_selector(fields))
                items, _ = store.list_objects(flt)
                assert items == _brute(store, flt), (namespace, labels, fields)
    nodes, _ = store.list_objects(WatchFilter(NODES))
    assert [n["metadata"]["name"] for n in nodes] == sorted(n["metadata"]["name"] for n in nodes)


@pytest.mark.parametrize("seed", range(5))
def test_indexed_lists_equal_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    store = Store()
    for namespace in NAMESPACES:
        if not store.namespace_exists(namespace):
            store.create(
                NS_RESOURCE,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}, "spec": {}},
            )
    names = [f"p{i}" for i in range(40)]
    for step in range(400):
        namespace, name = rng.choice(NAMESPACES), rng.choice(names)
        current = store.try_get(PODS, namespace, name)
        if current is None:
            store.create(PODS, _pod(namespace, name, rng))
        elif rng.random() < 0.3:
            store.delete(PODS, namespace, name, expected_rv=None)
        else:
            updated = copy.deepcopy(current)
            fresh = _pod(namespace, name, rng)
            updated["metadata"]["labels"] = fresh["metadata"]["labels"]
            updated["spec"] = fresh["spec"]
            store.update(PODS, updated, expected_rv=current["metadata"]["resourceVersion"])
        if step % 50 == 0:
            _check(store)
    _check(store)
    reloaded = Store()
    reloaded.load_state(store.dump_state())
    assert reloaded.resource_version == store.resource_version
    _check(reloaded)
    flt = WatchFilter(PODS)
    assert reloaded.list_objects(flt)[0] == store.list_objects(flt)[0]
