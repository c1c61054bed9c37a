"""Codec throughput: how long the wire formats on the scheduler's hot path take to encode and decode.

Run: `.venv/bin/python bench/codecs_bench.py` (prints one line per case; no assertions, figures only).
The filter path decodes every GPU node's register annotation and every bound pod's allocation on a
cache rebuild, so these per-call costs multiply by cluster size.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from services.common.codecs import (
    decode_node_devices,
    decode_pod_single_device,
    encode_node_devices,
    encode_pod_single_device,
    format_reasons,
    parse_reasons,
)
from services.common.model import ContainerDevice, DeviceInfo
from services.common.resources import NvidiaRequestConfig, generate_container_request

NODE = [
    DeviceInfo(
        id=f"GPU-{i:08x}-5c87-89ac-b1a6-7b53aa24b0ec",
        index=i,
        count=10,
        devmem=81920,
        devcore=100,
        type="NVIDIA-A100-SXM4-80GB",
        numa=i // 4,
        mode="hami-core",
        health=True,
    )
    for i in range(8)
]
POD = [
    [ContainerDevice(d.id, "NVIDIA", 4096, 30) for d in NODE[:2]],
    [],
    [ContainerDevice(NODE[3].id, "NVIDIA", 1000, 0)],
]
REQUEST = {"limits": {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"}}


def _measure(name: str, fn: Callable[[], object], number: int = 20000) -> None:
    best = min(timeit.repeat(fn, number=number, repeat=5)) / number
    print(f"{name:<40} {best * 1e6:8.2f} us/call")


def main() -> None:
    register = encode_node_devices(NODE)
    pod = encode_pod_single_device(POD)
    reasons = format_reasons({"CardInsufficientMemory": 3, "CardTypeMismatch": 2, "NumaNotFit": 1}, 8)
    cfg = NvidiaRequestConfig()
    print(f"node register annotation: {len(register)} bytes for {len(NODE)} GPUs")
    _measure("encode_node_devices (8 GPUs)", lambda: encode_node_devices(NODE), 5000)
    _measure("decode_node_devices (8 GPUs)", lambda: decode_node_devices(register), 5000)
    _measure("encode_pod_single_device (3 slots)", lambda: encode_pod_single_device(POD))
    _measure("decode_pod_single_device (3 slots)", lambda: decode_pod_single_device(pod))
    _measure("format_reasons", lambda: format_reasons({"CardInsufficientMemory": 3}, 8))
    _measure("parse_reasons", lambda: parse_reasons(reasons))
    _measure("generate_container_request", lambda: generate_container_request(REQUEST, cfg))


if __name__ == "__main__":
    main()
