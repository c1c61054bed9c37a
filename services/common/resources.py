"""Container resource requests with HAMi's rules (docs/hami-wire.md#request-parsing,
docs/hami-wire.md#request-cases).

Kubernetes hands us container resources as quantity strings (`"1"`, `"16Gi"`, `"500m"`); this module parses
them exactly and turns a container's NVIDIA resources into a `ContainerDeviceRequest` the way HAMi's
`GenerateResourceRequests` does. Everything here is pure: plain data in, plain data out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from services.common import wire
from services.common.model import MEM_PERCENTAGE_UNSET, ContainerDeviceRequest

__all__ = [
    "INT32_MAX",
    "NvidiaRequestConfig",
    "QuantityError",
    "QuantityValue",
    "generate_container_request",
    "parse_quantity",
    "pod_container_requests",
    "quantity_as_int64",
]

INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# A quantity as it appears in a pod spec decoded from JSON/YAML: Kubernetes serialises quantities as strings,
# but hand-written YAML often yields bare numbers.
QuantityValue = str | int | float


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


_DECIMAL_SUFFIXES: Final[Mapping[str, Fraction]] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_BINARY_SUFFIXES: Final[Mapping[str, Fraction]] = {
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
# <quantity> ::= <sign>? <number> <suffix>; <number> ::= digits | digits. | digits.digits | .digits
_QUANTITY_RE: Final = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(.*)", re.DOTALL)
# <decimalExponent> ::= ("e" | "E") <signed integer>; a bare "E" is the exa suffix instead.
_EXPONENT_RE: Final = re.compile(r"[eE]([+-]?[0-9]+)")
# Far beyond anything a device resource can mean; the bound keeps a hostile "1e999999999" from costing memory.
_MAX_EXPONENT: Final = 1000


def parse_quantity(value: QuantityValue) -> Fraction:
    """The exact value of a Kubernetes quantity (`"1"`, `"1.5"`, `"2e3"`, `"500m"`, `"16Gi"`, ...).

    Plain numbers from a YAML document are accepted as well; floats are read through their shortest decimal
    representation so that `0.1` means one tenth, as the user wrote it.
    """
    if isinstance(value, bool):
        raise QuantityError(f"quantity must be a string or a number, got the boolean {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"quantity must be finite, got {value!r}")
        return Fraction(repr(value))
    if not isinstance(value, str):
        raise QuantityError(f"quantity must be a string or a number, got {type(value).__name__} {value!r}")
    if value.isascii() and value.isdigit():
        return Fraction(int(value))  # the usual device quantity ("1", "4096"): no pattern, no suffix

    match = _QUANTITY_RE.fullmatch(value)
    if match is None:
        raise QuantityError(
            f"invalid quantity {value!r}: expected an optionally signed decimal number followed by a suffix "
            "(e.g. '1', '0.5', '500m', '16Gi', '2e3')"
        )
    sign, number, suffix = match.groups()
    magnitude = Fraction(number)
    if suffix in _DECIMAL_SUFFIXES:
        multiplier = _DECIMAL_SUFFIXES[suffix]
    elif suffix in _BINARY_SUFFIXES:
        multiplier = _BINARY_SUFFIXES[suffix]
    else:
        exponent = _EXPONENT_RE.fullmatch(suffix)
        if exponent is None:
            raise QuantityError(
                f"invalid quantity {value!r}: unknown suffix {suffix!r} (want one of n, u, m, k, M, G, T, P, "
                "E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent such as e3)"
            )
        power = int(exponent.group(1))
        if abs(power) > _MAX_EXPONENT:
            raise QuantityError(f"invalid quantity {value!r}: exponent {power} is out of range")
        multiplier = Fraction(10) ** power
    result = magnitude * multiplier
    return -result if sign == "-" else result


def quantity_as_int64(value: QuantityValue) -> int | None:
    """The quantity as an int64 when it is a whole number in range, else None (HAMi's `Quantity.AsInt64`).

    Quantities reaching the scheduler come from the API server, which stores them canonicalised, so "a whole
    number that fits int64" is exactly what `AsInt64` accepts there. Malformed strings (impossible from the
    API server) count as not-an-integer rather than raising, so request derivation stays total.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit():
        whole = int(value)  # the usual device quantity, without a Fraction
        return whole if whole <= _INT64_MAX else None
    try:
        parsed = parse_quantity(value)
    except QuantityError:
        return None
    if parsed.denominator != 1 or not _INT64_MIN <= parsed.numerator <= _INT64_MAX:
        return None
    return parsed.numerator


@dataclass(frozen=True, slots=True)
class NvidiaRequestConfig:
    """The `nvidia:` keys of `device-config.yaml` that shape request derivation (chart defaults)."""

    resource_count_name: str = wire.RESOURCE_GPU
    resource_memory_name: str = wire.RESOURCE_GPUMEM
    resource_memory_percentage_name: str = wire.RESOURCE_GPUMEM_PERCENTAGE
    resource_core_name: str = wire.RESOURCE_GPUCORES
    resource_priority_name: str = wire.RESOURCE_PRIORITY
    default_memory: int = 0
    default_cores: int = 0
    default_gpu_num: int = 1
    memory_factor: int = 1


_DEFAULT_CONFIG: Final = NvidiaRequestConfig()


@dataclass(frozen=True, slots=True)
class _Lookup:
    """A resource as HAMi sees it: present or not (limits first, then requests), and its int64 value."""

    present: bool
    value: int | None


def _lookup(resources: Mapping[str, object], name: str) -> _Lookup:
    # HAMi reads `Limits[name]` and falls back to `Requests[name]` only when the limit is absent.
    for section in ("limits", "requests"):
        entries = resources.get(section)
        if isinstance(entries, Mapping) and name in entries:
            raw = entries[name]
            value = quantity_as_int64(raw) if isinstance(raw, str | int | float) else None
            return _Lookup(True, value)
    return _Lookup(False, None)


def generate_container_request(
    resources: Mapping[str, object], cfg: NvidiaRequestConfig = _DEFAULT_CONFIG
) -> ContainerDeviceRequest | None:
    """A container's NVIDIA request, or None when it has none (HAMi `GenerateResourceRequests`).

    `resources` is the container's `resources` object in Kubernetes JSON shape: `{"limits": {...},
    "requests": {...}}` mapping resource names to quantities. None means "no NVIDIA request", which is what
    HAMi expresses as an empty request with `Nums == 0`.
    """
    count = _lookup(resources, cfg.resource_count_name)
    # The GPU count must be a positive whole number that fits int32; anything else is no request at all
    # (HAMi keeps only requests with Nums > 0, and rejects counts that would wrap an int32).
    if count.value is None or not 0 < count.value <= INT32_MAX:
        return None

    factor = max(cfg.memory_factor, 1)
    memreq = 0
    memory = _lookup(resources, cfg.resource_memory_name)
    if memory.present:
        # gpumem must be a plain whole number of MiB whose scaled value fits int32; otherwise HAMi drops the
        # whole request rather than guessing ("16Gi" is 2^34 MiB, not 16 GiB, and overflows).
        if memory.value is None or not 0 <= memory.value <= INT32_MAX // factor:
            return None
        memreq = memory.value * factor

    percentage = MEM_PERCENTAGE_UNSET
    pct = _lookup(resources, cfg.resource_memory_percentage_name)
    if pct.value is not None:
        if pct.value > 100:
            # Clamped, never wrapped: 101 (the sentinel) and values beyond int32 both mean the whole card.
            percentage = 100
        elif pct.value > 0:
            percentage = pct.value
        # <= 0 stays unset: a zero percentage must not book a card with no memory.

    if percentage == MEM_PERCENTAGE_UNSET and memreq == 0:
        if cfg.default_memory != 0:
            memreq = cfg.default_memory
        else:
            percentage = 100

    cores = cfg.default_cores
    core = _lookup(resources, cfg.resource_core_name)
    if core.value is not None:
        if core.value < 0:
            # Negative compute cannot be booked; later HAMi releases reject the request, and so do we.
            return None
        # Values above 100 are kept: Fit clamps them to 100 (docs/hami-wire.md#fit step 8).
        cores = min(core.value, INT32_MAX)

    return ContainerDeviceRequest(
        nums=count.value,
        type=wire.NVIDIA,
        memreq=memreq,
        mem_percentage_req=percentage,
        coresreq=cores,
    )


def _containers(pod_spec: Mapping[str, object], key: str) -> Sequence[object]:
    containers = pod_spec.get(key)
    if isinstance(containers, Sequence) and not isinstance(containers, str):
        return containers
    return ()


def pod_container_requests(
    pod_spec: Mapping[str, object], cfg: NvidiaRequestConfig = _DEFAULT_CONFIG
) -> list[ContainerDeviceRequest | None]:
    """One entry per container, init containers first then app containers: the index space of the pod device
    annotation (docs/hami-wire.md#filter step 1). `pod_spec` is `pod["spec"]` in Kubernetes JSON shape."""
    requests: list[ContainerDeviceRequest | None] = []
    for key in ("initContainers", "containers"):
        for container in _containers(pod_spec, key):
            resources = container.get("resources") if isinstance(container, Mapping) else None
            requests.append(
                generate_container_request(resources if isinstance(resources, Mapping) else {}, cfg)
            )
    return requests
