"""``MutatingWebhookConfiguration`` objects: server-side defaults and validation. Pure functions.

The rules are those of ``admissionregistration.k8s.io/v1``: defaults are filled in the way the
apiserver does on write (``failurePolicy: Fail``, ``matchPolicy: Equivalent``, empty selectors,
``timeoutSeconds: 10``, ``reinvocationPolicy: Never``, rule ``scope: "*"``), and a configuration the
apiserver would refuse is refused with a 422 naming every bad field. kube-local has no Services, so
a ``clientConfig.service`` reference is refused as well: point ``clientConfig.url`` at the webhook.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from services.common.selectors import (
    LabelRequirement,
    LabelSelector,
    SelectorError,
    validate_label_key,
    validate_label_value,
)
from sim.kubelocal.errors import ApiError

Obj = dict[str, Any]

GROUP = "admissionregistration.k8s.io"
KIND = "MutatingWebhookConfiguration"

#: AdmissionReview versions kube-local can send, in its order of preference.
SUPPORTED_REVIEW_VERSIONS = ("v1", "v1beta1")
DEFAULT_TIMEOUT_SECONDS = 10
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT", "*")
SCOPES = ("*", "Cluster", "Namespaced")

_SELECTOR_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
_QUALIFIED_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2,}$")


def apply_webhook_defaults(obj: Obj) -> None:
    """The apiserver's defaulting of a MutatingWebhookConfiguration (in place; ignores bad shapes)."""
    webhooks = obj.get("webhooks")
    if not isinstance(webhooks, list):
        return
    for hook in webhooks:
        if not isinstance(hook, dict):
            continue
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        if hook.get("namespaceSelector") is None:
            hook["namespaceSelector"] = {}
        if hook.get("objectSelector") is None:
            hook["objectSelector"] = {}
        if hook.get("timeoutSeconds") is None:
            hook["timeoutSeconds"] = DEFAULT_TIMEOUT_SECONDS
        hook.setdefault("reinvocationPolicy", "Never")
        for rule in hook.get("rules") or []:
            if isinstance(rule, dict) and not rule.get("scope"):
                rule["scope"] = "*"
        client_config = hook.get("clientConfig")
        service = client_config.get("service") if isinstance(client_config, dict) else None
        if isinstance(service, dict) and service.get("port") is None:
            service["port"] = 443


def label_selector(spec: Any) -> LabelSelector:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) as a :class:`LabelSelector`.

    ``None`` and ``{}`` select everything. Raises :class:`SelectorError` naming the bad part.
    """
    if spec is None:
        return LabelSelector()
    if not isinstance(spec, Mapping):
        raise SelectorError("must be an object with matchLabels and/or matchExpressions")
    unknown = sorted(set(spec) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise SelectorError(f"unknown field {unknown[0]!r}")
    requirements: list[LabelRequirement] = []
    match_labels = spec.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be a map of strings")
    for key, value in sorted(match_labels.items()):
        if not isinstance(key, str) or not isinstance(value, str):
            raise SelectorError("matchLabels must be a map of strings")
        validate_label_key(key)
        validate_label_value(value)
        requirements.append(LabelRequirement(key, "=", (value,)))
    expressions = spec.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    for i, expr in enumerate(expressions):
        where = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise SelectorError(f"{where} must be an object")
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values")
        if not isinstance(key, str) or not key:
            raise SelectorError(f"{where}.key: Required value")
        validate_label_key(key)
        if operator not in _SELECTOR_OPERATORS:
            raise SelectorError(
                f'{where}.operator: Unsupported value: {operator!r}: supported values: "DoesNotExist", '
                '"Exists", "In", "NotIn"'
            )
        values = values or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SelectorError(f"{where}.values must be a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise SelectorError(
                f"{where}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            )
        if operator in ("Exists", "DoesNotExist") and values:
            raise SelectorError(
                f"{where}.values: Forbidden: may not be specified when `operator` is "
                "'Exists' or 'DoesNotExist'"
            )
        for value in values:
            validate_label_value(value)
        requirements.append(LabelRequirement(key, _SELECTOR_OPERATORS[operator], tuple(values)))
    return LabelSelector(tuple(requirements))


def decode_ca_bundle(value: Any) -> bytes:
    """``clientConfig.caBundle`` as sent over JSON (base64 of PEM) -> the PEM bytes."""
    if value in (None, ""):
        return b""
    if not isinstance(value, str):
        raise ValueError("must be a base64-encoded string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"illegal base64 data: {exc}") from None


def _string_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _validate_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  - raises on a malformed port
    except ValueError as exc:
        return f"Invalid value: {url!r}: {exc}"
    if parts.scheme != "https":
        return f"Invalid value: {url!r}: 'https' is the only allowed URL scheme"
    if not parts.hostname:
        return f"Invalid value: {url!r}: host must be specified"
    if parts.username or parts.password:
        return f"Invalid value: {url!r}: user information is not permitted in the URL"
    if parts.fragment or "#" in url:
        return f"Invalid value: {url!r}: fragments are not permitted in the URL"
    if parts.query or "?" in url:
        return f"Invalid value: {url!r}: query parameters are not permitted in the URL"
    return None


def _validate_rule(rule: Any, where: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(rule, dict):
        problems.append((where, "Invalid value: must be an object"))
        return
    operations = _string_list(rule.get("operations"))
    if not operations:
        problems.append((f"{where}.operations", "Required value"))
    else:
        for j, op in enumerate(operations):
            if op not in OPERATIONS:
                problems.append(
                    (
                        f"{where}.operations[{j}]",
                        f'Unsupported value: "{op}": supported values: "*", "CONNECT", "CREATE", '
                        '"DELETE", "UPDATE"',
                    )
                )
        if "*" in operations and len(operations) > 1:
            problems.append(
                (f"{where}.operations", "Invalid value: if '*' is present, must not specify other operations")
            )
    for key in ("apiGroups", "apiVersions", "resources"):
        values = _string_list(rule.get(key))
        if not values:
            problems.append((f"{where}.{key}", "Required value"))
        elif "*" in values and len(values) > 1:
            problems.append(
                (f"{where}.{key}", "Invalid value: if '*' is present, must not specify other values")
            )
    for j, resource in enumerate(_string_list(rule.get("resources")) or []):
        if not resource or resource.count("/") > 1 or resource.startswith("/") or resource.endswith("/"):
            problems.append(
                (
                    f"{where}.resources[{j}]",
                    f'Invalid value: "{resource}": must be resource or resource/subresource',
                )
            )
    scope = rule.get("scope", "*")
    if scope not in SCOPES:
        problems.append(
            (
                f"{where}.scope",
                f'Unsupported value: "{scope}": supported values: "*", "Cluster", "Namespaced"',
            )
        )


def _validate_webhook(hook: Any, where: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(hook, dict):
        problems.append((where, "Invalid value: must be an object"))
        return
    name = hook.get("name")
    if not isinstance(name, str) or not name:
        problems.append((f"{where}.name", "Required value"))
    elif not _QUALIFIED_NAME_RE.match(name):
        problems.append(
            (
                f"{where}.name",
                f'Invalid value: "{name}": should be a domain with at least three segments separated by dots',
            )
        )
    client_config = hook.get("clientConfig")
    if not isinstance(client_config, dict):
        problems.append(
            (f"{where}.clientConfig", "Required value: exactly one of url or service is required")
        )
    else:
        url, service = client_config.get("url"), client_config.get("service")
        if service is not None:
            problems.append(
                (
                    f"{where}.clientConfig.service",
                    "Forbidden: kube-local has no Services to resolve; "
                    "set clientConfig.url to the webhook's https:// address instead",
                )
            )
        elif not isinstance(url, str) or not url:
            problems.append(
                (f"{where}.clientConfig", "Required value: exactly one of url or service is required")
            )
        else:
            problem = _validate_url(url)
            if problem:
                problems.append((f"{where}.clientConfig.url", problem))
        try:
            decode_ca_bundle(client_config.get("caBundle"))
        except ValueError as exc:
            problems.append((f"{where}.clientConfig.caBundle", f"Invalid value: {exc}"))
    versions = _string_list(hook.get("admissionReviewVersions"))
    if not versions:
        problems.append(
            (
                f"{where}.admissionReviewVersions",
                "Required value: must specify one of v1, v1beta1",
            )
        )
    elif not any(v in SUPPORTED_REVIEW_VERSIONS for v in versions):
        problems.append(
            (
                f"{where}.admissionReviewVersions",
                f"Invalid value: {versions!r}: must include at least one of v1, v1beta1",
            )
        )
    side_effects = hook.get("sideEffects")
    if side_effects is None:
        problems.append(
            (f"{where}.sideEffects", 'Required value: must specify one of "None", "NoneOnDryRun"')
        )
    elif side_effects not in ("None", "NoneOnDryRun"):
        problems.append(
            (
                f"{where}.sideEffects",
                f'Unsupported value: "{side_effects}": supported values: "None", "NoneOnDryRun"',
            )
        )
    enums = {
        "failurePolicy": ("Fail", "Ignore"),
        "matchPolicy": ("Equivalent", "Exact"),
        "reinvocationPolicy": ("IfNeeded", "Never"),
    }
    for key, allowed in enums.items():
        value = hook.get(key)
        if value is not None and value not in allowed:
            choices = ", ".join(f'"{a}"' for a in allowed)
            problems.append((f"{where}.{key}", f'Unsupported value: "{value}": supported values: {choices}'))
    timeout = hook.get("timeoutSeconds")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 30
    ):
        problems.append(
            (
                f"{where}.timeoutSeconds",
                f"Invalid value: {timeout!r}: the timeout value must be between 1 and 30 seconds",
            )
        )
    for key in ("namespaceSelector", "objectSelector"):
        try:
            label_selector(hook.get(key))
        except SelectorError as exc:
            problems.append((f"{where}.{key}", f"Invalid value: {exc}"))
    if hook.get("matchConditions"):
        problems.append(
            (
                f"{where}.matchConditions",
                "Forbidden: kube-local cannot evaluate CEL match conditions; use namespaceSelector, "
                "objectSelector and rules",
            )
        )
    rules = hook.get("rules")
    if rules is not None and not isinstance(rules, list):
        problems.append((f"{where}.rules", "Invalid value: must be a list"))
    for j, rule in enumerate(rules or []):
        _validate_rule(rule, f"{where}.rules[{j}]", problems)


def validate_webhook_configuration(obj: Obj) -> None:
    """Raises a 422 ``Invalid`` naming each bad field, as the apiserver does."""
    problems: list[tuple[str, str]] = []
    webhooks = obj.get("webhooks")
    if webhooks is not None and not isinstance(webhooks, list):
        problems.append(("webhooks", "Invalid value: must be a list"))
        webhooks = []
    seen: set[str] = set()
    for i, hook in enumerate(webhooks or []):
        _validate_webhook(hook, f"webhooks[{i}]", problems)
        name = hook.get("name") if isinstance(hook, dict) else None
        if isinstance(name, str) and name:
            if name in seen:
                problems.append((f"webhooks[{i}].name", f'Duplicate value: "{name}"'))
            seen.add(name)
    if not problems:
        return
    name = str((obj.get("metadata") or {}).get("name") or "")
    rendered = [f"{field}: {message}" for field, message in problems]
    detail = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    raise ApiError(
        422,
        "Invalid",
        f'{KIND}.{GROUP} "{name}" is invalid: {detail}',
        name=name,
        kind=KIND,
        group=GROUP,
        causes=[{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in problems],
    )
