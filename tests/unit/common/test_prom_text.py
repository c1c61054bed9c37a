"""The shared Prometheus text writer: escaping, number spellings, families and the per-object line cache."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import build_info_family
from services.common.prom_text import (
    COUNTER,
    Family,
    FamilySamples,
    LabelSet,
    LineCache,
    escape_help,
    escape_label_value,
    exact_number,
    go_float,
    label_text,
    render_text,
)


def test_label_values_and_help_are_escaped() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help('a\\b"c\nd') == 'a\\\\b"c\\nd'  # quotes stay as they are in HELP
    assert label_text(("node", "pod"), ('n"1', "p")) == '{node="n\\"1",pod="p"}'
    assert label_text((), ()) == ""


def test_number_spellings() -> None:
    assert [exact_number(v) for v in (5320, 0.5, math.inf, -math.inf)] == ["5320", "0.5", "+Inf", "-Inf"]
    assert exact_number(math.nan) == "NaN"
    # prometheus_client's spelling: always a float, Go's exponent form for large values.
    assert [go_float(v) for v in (1, 0.25, 16000 * 1024 * 1024)] == ["1.0", "0.25", "1.6777216e+10"]


def test_family_header_and_line() -> None:
    family = Family("kube_vgpu_x_total", "Things\ncounted", COUNTER, ("reason",))
    assert family.header() == "# HELP kube_vgpu_x_total Things\\ncounted\n# TYPE kube_vgpu_x_total counter\n"
    assert family.line(["bad"], "3") == 'kube_vgpu_x_total{reason="bad"} 3\n'


def test_render_text_parses_back() -> None:
    used = FamilySamples(Family("hami_used_bytes", "Used", label_names=("node", "device_uuid")))
    used.add(LabelSet(("node", "device_uuid"), ('we"ird\\node\n', "GPU-a")), 1024)
    used.add(LabelSet(("node", "device_uuid"), ("n", "GPU-b")), 0.5)
    mapped = FamilySamples(Family("kube_vgpu_mapped", "Mapped"), [(LabelSet((), ()), 3)])
    labels = {"version": "1.0", "platform": "linux/amd64"}
    info = FamilySamples(build_info_family(labels), [(LabelSet(tuple(labels), tuple(labels.values())), 1)])
    text = render_text([used, mapped, info])
    assert "kube_vgpu_mapped 3\n" in text
    assert 'hami_build_info{version="1.0",platform="linux/amd64"} 1\n' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["hami_used_bytes"].samples] == [
        ({"node": 'we"ird\\node\n', "device_uuid": "GPU-a"}, 1024),
        ({"node": "n", "device_uuid": "GPU-b"}, 0.5),
    ]
    assert families["hami_build_info"].type == "gauge"
    assert render_text([used], go_float).endswith('device_uuid="GPU-b"} 0.5\n')
    assert 'device_uuid="GPU-a"} 1024.0\n' in render_text([used], go_float)


class _Source:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Source) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


def test_line_cache_renders_only_new_or_changed_sources_and_forgets_absent_keys() -> None:
    calls: list[tuple[int, str | None]] = []

    def render(source: _Source, previous: str | None) -> str:
        calls.append((source.value, previous))
        return f"v{source.value}"

    cache: LineCache[str, _Source, str] = LineCache(render)
    a, b = _Source(1), _Source(2)
    assert cache.refresh([("a", a), ("b", b)]) == ["v1", "v2"]
    assert cache.refresh([("b", b), ("a", a)]) == ["v2", "v1"]  # same objects: nothing rendered
    assert calls == [(1, None), (2, None)]
    assert cache.refresh([("a", _Source(1))]) == ["v1"]  # an equal copy is not the same object
    assert calls[-1] == (1, "v1")  # the renderer sees the key's previous lines
    assert cache.refresh([("b", b)]) == ["v2"]  # "b" was forgotten by the last refresh
    assert calls == [(1, None), (2, None), (1, "v1"), (2, None)]


def test_line_cache_reuses_equal_sources_when_asked() -> None:
    calls: list[int] = []

    def render(source: _Source, _: str | None) -> str:
        calls.append(source.value)
        return str(source.value)

    cache: LineCache[str, _Source, str] = LineCache(render, reuse_equal=True)
    cache.refresh([("a", _Source(1))])
    assert cache.refresh([("a", _Source(1))]) == ["1"]
    assert cache.refresh([("a", _Source(2))]) == ["2"]
    assert calls == [1, 2]
