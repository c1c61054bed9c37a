"""Kubernetes object names, validated as the API server validates them, before any URL path is built from
one: a name taken from a request (an extender's bind call) must never reach another object's path
(`..` would address the namespace itself)."""

from __future__ import annotations

import re
from typing import Final

_DNS1123_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
SUBDOMAIN_MAX: Final = 253
LABEL_MAX: Final = 63


def subdomain_problem(name: str) -> str | None:
    """Why `name` is not a valid object name (pods, nodes: a DNS-1123 subdomain), or None."""
    if not name:
        return "must not be empty"
    if len(name) > SUBDOMAIN_MAX:
        return f"must be no more than {SUBDOMAIN_MAX} characters"
    if _DNS1123_SUBDOMAIN_RE.fullmatch(name) is None:
        return "must consist of lower case alphanumeric characters, '-' or '.', and start and end with one"
    return None


def label_problem(name: str) -> str | None:
    """Why `name` is not a valid namespace name (a DNS-1123 label), or None."""
    if not name:
        return "must not be empty"
    if len(name) > LABEL_MAX:
        return f"must be no more than {LABEL_MAX} characters"
    if _DNS1123_LABEL_RE.fullmatch(name) is None:
        return "must consist of lower case alphanumeric characters or '-', and start and end with one"
    return None
