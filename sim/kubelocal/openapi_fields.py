"""Server-side field validation (``?fieldValidation=Strict``), checked against the published OpenAPI v3
schemas (``apidocs/``, the real server's).

Once kube-local publishes ``/openapi/v3``, kubectl's ``apply``, ``create``, ``replace`` and ``edit`` stop
validating manifests themselves and send ``fieldValidation=Strict`` instead, trusting the server to refuse
a field its types do not have (a typo such as ``imagePullPolicyy``). :func:`unknown_fields` lists those
fields, in the order they appear, as the real server's strict decoder names them
(``spec.containers[0].imagePullPolicyy``); :func:`check_unknown_fields` refuses a write under ``Strict``
with the real server's answer: 400 for a create or update body, 422 for a patch. Under ``Warn`` (the
default) and ``Ignore`` kube-local keeps the fields (docs/kubelocal-differences.md#openapi).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.apidocs_capture import read_document, v3_file
from sim.kubelocal.openapi_filter import v3_document_name
from sim.kubelocal.resources import ResourceType

DIRECTIVES: Final = ("", "Ignore", "Strict", "Warn")
_SCHEMA_PREFIX: Final = "#/components/schemas/"
Schema = Mapping[str, Any]


@functools.cache
def _schemas(group: str, version: str) -> dict[str, Schema]:
    document = read_document(v3_file(v3_document_name(group, version)))
    schemas: dict[str, Schema] = document["components"]["schemas"]
    return schemas


def kind_schema(rt: ResourceType) -> tuple[dict[str, Schema], Schema]:
    """The schemas of ``rt``'s group version and the one describing its kind (by its
    ``x-kubernetes-group-version-kind``)."""
    schemas = _schemas(rt.group, rt.version)
    for schema in schemas.values():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            if (gvk.get("group"), gvk.get("version"), gvk.get("kind")) == (rt.group, rt.version, rt.kind):
                return schemas, schema
    raise LookupError(f"the published OpenAPI has no schema for {rt.kind} ({rt.api_version})")


def resolve_schema(schema: Schema, schemas: Mapping[str, Schema]) -> Schema:
    """Follows ``$ref`` and the single-element ``allOf`` the server wraps references in."""
    while True:
        ref = schema.get("$ref")
        if ref is None and len(schema.get("allOf", ())) == 1:
            ref = schema["allOf"][0].get("$ref")
        if not isinstance(ref, str) or not ref.startswith(_SCHEMA_PREFIX):
            return schema
        schema = schemas[ref[len(_SCHEMA_PREFIX) :]]


def _walk(value: Any, schema: Schema, schemas: Mapping[str, Schema], path: str) -> Iterator[str]:
    schema = resolve_schema(schema, schemas)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if key in properties:
                    yield from _walk(item, properties[key], schemas, where)
                else:
                    yield where
            return
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                yield from _walk(item, extra, schemas, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(item, schema["items"], schemas, f"{path}[{index}]")


def unknown_fields(rt: ResourceType, obj: Any) -> list[str]:
    """The fields of ``obj`` that ``rt``'s schema does not have, depth first in the object's order."""
    schemas, schema = kind_schema(rt)
    return list(_walk(obj, schema, schemas, ""))


def field_validation(request: web.BaseRequest, operation: str) -> str:
    """The request's ``fieldValidation`` directive; 422 for one the server does not know, naming the
    options kind of ``operation`` (``Create``, ``Update``, ``Patch``) as the real server does."""
    directive = request.query.get("fieldValidation", "")
    if directive not in DIRECTIVES:
        supported = ", ".join(f'"{d}"' for d in DIRECTIVES)
        raise errors.ApiError(
            422,
            "Invalid",
            f'{operation}Options.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
            f'"{directive}": supported values: {supported}',
        )
    return directive


def check_unknown_fields(
    request: web.BaseRequest, rt: ResourceType, obj: Any, operation: str, before: Any = None
) -> None:
    """Under ``fieldValidation=Strict``, refuses ``obj`` (a create/update body, or a patch's result when
    ``operation`` is ``Patch``) if it has fields ``rt`` does not. ``before`` is the stored object a patch
    applies to: fields it already had are not the patch's doing (the real server would have dropped them
    when they were written; kube-local keeps what a non-strict write sent)."""
    if field_validation(request, operation) != "Strict":
        return
    already = set(unknown_fields(rt, before)) if before is not None else set()
    unknown = [field for field in unknown_fields(rt, obj) if field not in already]
    if not unknown:
        return
    listed = ", ".join(f'unknown field "{field}"' for field in unknown)
    if operation == "Patch":
        raise errors.ApiError(422, "Invalid", f' "" is invalid: patch: strict decoding error: {listed}')
    kind = rt.kind
    raise errors.bad_request(
        f'{kind} in version "{rt.version}" cannot be handled as a {kind}: strict decoding error: {listed}'
    )
