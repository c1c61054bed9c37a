"""Resource quantities as the real server stores them: canonical strings
(docs/kubelocal-differences.md#quantities).

The real kube-apiserver decodes every ``Quantity`` field into its typed form and writes it back in canonical
form: ``nvidia.com/gpumem: 20000`` is stored as ``"20k"``, ``1`` as ``"1"``, ``0.5`` as ``"500m"``,
``1024Mi`` as ``"1Gi"``. A client reading the object back (``kubectl apply`` computing its next patch, a
test comparing with the real server) sees those strings. :func:`canonical_quantity` is that formatting;
:func:`canonicalize_quantities` applies it to every field the published OpenAPI schema types as a Quantity
(resources' limits and requests, node capacity, quota hard/used, ...). A value that is not a quantity is
left as it is: refusing it is validation's business, not formatting's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Final

from services.common.resources import QuantityError, parse_quantity
from sim.kubelocal.openapi_fields import Schema, kind_schema, resolve_schema
from sim.kubelocal.resources import Obj, ResourceType

QUANTITY_SCHEMA: Final = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_BINARY_SUFFIXES: Final = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL_SUFFIXES: Final = {
    -9: "n",
    -6: "u",
    -3: "m",
    0: "",
    3: "k",
    6: "M",
    9: "G",
    12: "T",
    15: "P",
    18: "E",
}
_BINARY_BY_POWER: Final = {0: "", 1: "Ki", 2: "Mi", 3: "Gi", 4: "Ti", 5: "Pi", 6: "Ei"}
_NANO: Final = 10**9
NANO: Final = Fraction(1, _NANO)
MILLI: Final = Fraction(1, 1000)


def _format(text: str) -> str:
    """The quantity format its suffix picks: BinarySI, DecimalExponent or DecimalSI."""
    stripped = text.strip()
    if stripped.endswith(_BINARY_SUFFIXES):
        return "BinarySI"
    tail = stripped.lstrip("+-0123456789.")
    return "DecimalExponent" if tail[:1] in ("e", "E") and tail[1:].lstrip("+-").isdigit() else "DecimalSI"


def _decimal(value: Fraction, exponent_format: bool) -> str:
    sign = "-" if value < 0 else ""
    mantissa, exponent = int(abs(value) * _NANO), -9
    if mantissa == 0:
        return "0"
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    if exponent % 3 == 1:
        mantissa, exponent = mantissa * 10, exponent - 1
    elif exponent % 3 == 2:
        mantissa, exponent = mantissa * 100, exponent - 2
    if exponent_format or exponent not in _DECIMAL_SUFFIXES:
        suffix = f"e{exponent}" if exponent else ""
    else:
        suffix = _DECIMAL_SUFFIXES[exponent]
    return f"{sign}{mantissa}{suffix}"


def canonical_quantity(value: Any, resolution: Fraction = NANO) -> str | None:
    """``value`` (a JSON string or number) as the real server writes it back, rounded up (away from zero)
    to a multiple of ``resolution``: a nano-unit on decode, a milli-unit for a ResourceList's values (the
    real server's defaulting); None when it is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        exact = parse_quantity(value)
    except QuantityError:
        return None
    steps = math.ceil(abs(exact) / resolution)
    parsed = steps * resolution if exact >= 0 else -steps * resolution
    if parsed == 0:
        return "0"
    kind = _format(value if isinstance(value, str) else repr(value))
    if kind == "BinarySI" and -1024 < parsed < 1024:
        kind = "DecimalSI"  # small binary values read better in decimal
    if kind == "BinarySI" and parsed.denominator != 1:
        kind = "DecimalSI"  # not a whole number of bytes: binary would round it
    if kind != "BinarySI":
        return _decimal(parsed, kind == "DecimalExponent")
    sign, amount, power = ("-" if parsed < 0 else ""), abs(parsed.numerator), 0
    while amount % 1024 == 0 and power < 6:
        amount //= 1024
        power += 1
    return f"{sign}{amount}{_BINARY_BY_POWER[power]}"


def _walk(value: Any, schema: Schema, schemas: Mapping[str, Schema], in_map: bool = False) -> Any:
    """``value`` with its Quantity fields canonical (containers are updated in place). ``in_map``: the
    value is one of a map's (a ResourceList such as limits, capacity or a quota's hard)."""
    if _is_quantity(schema):
        canonical = canonical_quantity(value, MILLI if in_map else NANO)
        return value if canonical is None else canonical
    schema = resolve_schema(schema, schemas)
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if isinstance(properties, dict) and key in properties:
                value[key] = _walk(item, properties[key], schemas)
            elif isinstance(extra, dict):
                value[key] = _walk(item, extra, schemas, in_map=True)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            value[index] = _walk(item, schema["items"], schemas)
    return value


def _is_quantity(schema: Schema) -> bool:
    ref = schema.get("$ref")
    if ref is None and len(schema.get("allOf", ())) == 1:
        ref = schema["allOf"][0].get("$ref")
    return isinstance(ref, str) and ref.endswith("/" + QUANTITY_SCHEMA)


def canonicalize_quantities(rt: ResourceType, obj: Obj) -> None:
    """Rewrites, in place, every Quantity field of ``obj`` (a ``rt``) in the real server's canonical form."""
    schemas, schema = kind_schema(rt)
    _walk(obj, schema, schemas)
