"""The GPU inventory a node advertises, as table rows: shared by local mode's summary and vgpuctl."""

from __future__ import annotations

from typing import Any

from services.common import wire
from services.common.codecs import WireFormatError, decode_node_devices

INVENTORY_COLUMNS = ["node", "gpu", "type", "memory_mib", "cores", "split", "numa", "health", "vgpus", "uuid"]


def inventory_rows(nodes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per registered GPU, decoded from the node annotations (what the scheduler would see)."""
    rows: list[dict[str, str]] = []
    for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        meta = node["metadata"]
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        register = (meta.get("annotations") or {}).get(wire.NODE_NVIDIA_REGISTER, "")
        try:
            devices = decode_node_devices(register)
        except WireFormatError as exc:
            # One node with a hand-edited annotation must not hide every other node's inventory.
            rows.append(
                {"node": meta["name"], "gpu": "?", "health": f"undecodable register annotation: {exc}"}
            )
            continue
        if not devices:
            rows.append({"node": meta["name"], "gpu": "-", "vgpus": allocatable.get(wire.RESOURCE_GPU, "0")})
            continue
        for dev in devices:
            rows.append(
                {
                    "node": meta["name"],
                    "gpu": str(dev.index),
                    "uuid": dev.id,
                    "type": dev.type,
                    "memory_mib": str(dev.devmem),
                    "cores": str(dev.devcore),
                    "split": str(dev.count),
                    "numa": str(dev.numa),
                    "health": "Healthy" if dev.health else "Unhealthy",
                    "vgpus": allocatable.get(wire.RESOURCE_GPU, "0"),
                }
            )
    return rows


def format_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    widths = {c: max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)
