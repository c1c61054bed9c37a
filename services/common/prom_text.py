"""The Prometheus text exposition format (0.0.4), written directly, for every service that serves `/metrics`.

prometheus_client's collectors and generic writer need most of a second for the ~80,000 samples of a large
cluster (the scheduler) and ~0.1 s for the 10,000 series of 1,000 containers (the monitor), on the one
interpreter that also answers the service's requests. Services therefore describe their families with
`Family`, render sample lines with `Family.line` (or whole families with `render_text`), and keep each
object's rendered lines in a `LineCache`, so a scrape formats only what changed since the last one.

Two number spellings exist because each service keeps the exact text it always served: `exact_number`
writes integers as integers (the monitor), `go_float` writes every value as prometheus_client does
(`1.6777216e+10`, `1.0`; the scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "COUNTER",
    "GAUGE",
    "Family",
    "FamilySamples",
    "LabelSet",
    "LineCache",
    "escape_help",
    "escape_label_value",
    "exact_number",
    "go_float",
    "label_text",
    "render_text",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
GAUGE: Final = "gauge"
COUNTER: Final = "counter"  # a counter family's name ends in _total

KeyT = TypeVar("KeyT")
SourceT = TypeVar("SourceT")
LinesT = TypeVar("LinesT")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def exact_number(value: float) -> str:
    """A sample value with integers written exactly (`5320`, not `5320.0`)."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def go_float(value: float) -> str:
    """A sample value spelled as prometheus_client's own writer spells it (always a float, Go's exponents)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """`{name="value",...}` with the values escaped; "" for no labels."""
    pairs = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in zip(names, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name, help text, type and label names."""

    name: str
    help: str
    type: str = GAUGE
    label_names: tuple[str, ...] = ()

    def header(self) -> str:
        return f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.type}\n"

    def line(self, values: Sequence[str], value: str) -> str:
        """One sample line; `values` are the label values in `label_names` order, `value` already spelled."""
        return f"{self.name}{label_text(self.label_names, values)} {value}\n"


class LabelSet:
    """Label values plus their rendered `{k="v",...}` text, shared by every family of one device."""

    __slots__ = ("_text", "names", "values")

    def __init__(self, names: Sequence[str], values: Sequence[str]) -> None:
        self.names = tuple(names)
        self.values = tuple(values)
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = label_text(self.names, self.values)
        return self._text


@dataclass(slots=True)
class FamilySamples:
    """A family with the samples of one scrape."""

    family: Family
    samples: list[tuple[LabelSet, float]] = field(default_factory=list)

    def add(self, labels: LabelSet, value: float) -> None:
        self.samples.append((labels, value))


def render_text(families: Iterable[FamilySamples], number: Callable[[float], str] = exact_number) -> str:
    """Whole families as exposition text, each header followed by its samples."""
    out: list[str] = []
    for fam in families:
        out.append(fam.family.header())
        name = fam.family.name
        out.extend(f"{name}{labels.text} {number(value)}\n" for labels, value in fam.samples)
    return "".join(out)


class LineCache(Generic[KeyT, SourceT, LinesT]):
    """The lines rendered from each reported object (a node's snapshot, a pod's usage, a container's view),
    kept while the object stays the same, so a scrape formats again only the objects that changed.

    `render(source, previous)` makes the lines of a new or changed source; `previous` is the key's lines of
    the last scrape (None at first), for renderers that can reuse parts of them. A source is the same when
    it is the same object or, with `reuse_equal`, an equal one (worth it where comparing is cheaper than
    rendering). Not thread-safe: a service that can scrape concurrently holds a lock around `refresh`.
    """

    __slots__ = ("_kept", "_render", "_reuse_equal")

    def __init__(
        self, render: Callable[[SourceT, LinesT | None], LinesT], *, reuse_equal: bool = False
    ) -> None:
        self._render = render
        self._reuse_equal = reuse_equal
        self._kept: dict[KeyT, tuple[SourceT, LinesT]] = {}

    def refresh(self, sources: Iterable[tuple[KeyT, SourceT]]) -> list[LinesT]:
        """The lines of every (key, source), in order; keys not given this time are forgotten."""
        kept = self._kept
        render = self._render
        reuse_equal = self._reuse_equal
        seen: dict[KeyT, tuple[SourceT, LinesT]] = {}
        out: list[LinesT] = []
        append = out.append  # the loop runs once per node, pod or container at every scrape
        for key, source in sources:
            entry = kept.get(key)
            if entry is None:
                entry = (source, render(source, None))
            elif entry[0] is not source and not (reuse_equal and entry[0] == source):
                entry = (source, render(source, entry[1]))
            seen[key] = entry
            append(entry[1])
        self._kept = seen
        return out
