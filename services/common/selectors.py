"""Label and field selectors with the apiserver's syntax. Pure functions, no I/O.

Label selectors (``labelSelector=``): comma-joined requirements, each one of ``key``, ``!key``,
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``, ``key>N`` and
``key<N``. As in Kubernetes, ``!=`` and ``notin`` also match objects that lack the key.

Field selectors (``fieldSelector=``): comma-joined ``field=value``, ``field==value`` or
``field!=value``; ``\\,``, ``\\=`` and ``\\\\`` escape those characters in a value. Which fields a
resource supports is the caller's business (see ``resources.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = frozenset("!=,()<>")


class SelectorError(ValueError):
    """The selector text does not parse or names an invalid key or value."""


def validate_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (at most 63 characters)"
        )


def validate_label_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f"invalid label value {value!r}: must be 63 characters or less and consist of alphanumeric "
            "characters, '-', '_' or '.', starting and ending with an alphanumeric character"
        )


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        present = self.key in labels
        if op == "exists":
            return present
        if op == "!":
            return not present
        if op in ("=", "in"):
            return present and labels[self.key] in self.values
        if op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            actual = int(labels[self.key])
        except ValueError:
            return False
        bound = int(self.values[0])
        return actual > bound if op == "gt" else actual < bound

    def __str__(self) -> str:
        op = self.operator
        if op == "exists":
            return self.key
        if op == "!":
            return "!" + self.key
        if op in ("in", "notin"):
            return f"{self.key} {op} ({','.join(self.values)})"
        symbol = {"gt": ">", "lt": "<"}.get(op, op)
        return f"{self.key}{symbol}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _lex(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "!=" and i + 1 < n and text[i + 1] == "=":
            tokens.append(ch + "=")
            i += 2
        elif ch in _SPECIAL:
            tokens.append(ch)
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def _is_ident(token: str | None) -> bool:
    return token is not None and token not in _SPECIAL and token not in ("==", "!=")


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def fail(self, why: str) -> SelectorError:
        return SelectorError(f"unable to parse requirement in label selector {self.text!r}: {why}")

    def parse(self) -> LabelSelector:
        if not self.tokens:
            return LabelSelector()
        requirements: list[LabelRequirement] = []
        while True:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                break
            if token != ",":
                raise self.fail(f"found {token!r}, expected ','")
        return LabelSelector(tuple(requirements))

    def key(self) -> str:
        token = self.take()
        if not _is_ident(token):
            raise self.fail(f"found {token!r}, expected a label key")
        assert token is not None
        validate_label_key(token)
        return token

    def requirement(self) -> LabelRequirement:
        if self.peek() == "!":
            self.take()
            return LabelRequirement(self.key(), "!")
        key = self.key()
        op = self.peek()
        if op is None or op == ",":
            return LabelRequirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            value = ""
            if _is_ident(self.peek()):
                value = self.take() or ""
            validate_label_value(value)
            return LabelRequirement(key, "!=" if op == "!=" else "=", (value,))
        if op in ("in", "notin"):
            return LabelRequirement(key, op, self.value_set())
        if op in (">", "<"):
            token = self.take()
            if not _is_ident(token) or token is None or not re.fullmatch(r"-?\d+", token):
                raise self.fail(f"for '{op}' operator, the value must be an integer, got {token!r}")
            return LabelRequirement(key, "gt" if op == ">" else "lt", (token,))
        raise self.fail(f"found {op!r}, expected one of '=', '==', '!=', 'in', 'notin', '>', '<'")

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise self.fail("expected '(' after 'in'/'notin'")
        if self.peek() == ")":
            raise self.fail("for 'in', 'notin' operators, values set can't be empty")
        values: list[str] = []
        while True:
            token = self.peek()
            value = ""
            if _is_ident(token):
                value = self.take() or ""
            validate_label_value(value)
            values.append(value)
            sep = self.take()
            if sep == ")":
                break
            if sep != ",":
                raise self.fail(f"found {sep!r}, expected ',' or ')' in value set")
        return tuple(values)


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parses ``text``; ``None`` or blank selects everything. Raises :class:`SelectorError`."""
    if not text or not text.strip():
        return LabelSelector()
    return _LabelParser(text).parse()


# --- field selectors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    operator: str  # "=" or "!="
    value: str

    def matches(self, actual: str) -> bool:
        return (actual == self.value) if self.operator == "=" else (actual != self.value)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(r.field for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, get: Callable[[str], str]) -> bool:
        """``get(field)`` returns the object's value of ``field`` as the apiserver renders it."""
        return all(r.matches(get(r.field)) for r in self.requirements)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape_field_value(value: str, term: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector term {term!r}: invalid escape sequence")
            out.append(value[i + 1])
            i += 2
            continue
        if ch in ",=":
            raise SelectorError(f"invalid field selector term {term!r}: unescaped {ch!r} in value")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parses ``text``; ``None`` or blank selects everything. Raises :class:`SelectorError`."""
    if not text or not text.strip():
        return FieldSelector()
    requirements: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        idx = term.find("=")
        if idx <= 0:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        if term[idx - 1] == "!":
            field, op, value = term[: idx - 1], "!=", term[idx + 1 :]
        elif term[idx + 1 : idx + 2] == "=":
            field, op, value = term[:idx], "=", term[idx + 2 :]
        else:
            field, op, value = term[:idx], "=", term[idx + 1 :]
        field = field.strip()
        if not field:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        requirements.append(FieldRequirement(field, op, _unescape_field_value(value, term)))
    return FieldSelector(tuple(requirements))
