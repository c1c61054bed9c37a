"""An HTTP Accept header read as the API server reads it: kube-local chooses protobuf, a Table or plain
JSON from it (sim/kubelocal/pb/negotiation.py, sim/kubelocal/tables.py)."""

from __future__ import annotations


def media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of an Accept header with their parameters, most preferred first (by q, then as
    listed); ranges with q=0 are dropped."""
    ranked: list[tuple[float, int, str, dict[str, str]]] = []
    for index, clause in enumerate(accept.split(",")):
        media, *raw_params = [part.strip() for part in clause.split(";")]
        if not media:
            continue
        params: dict[str, str] = {}
        for raw in raw_params:
            key, _, value = raw.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            ranked.append((-quality, index, media.lower(), params))
    ranked.sort(key=lambda entry: (entry[0], entry[1]))
    return [(media, params) for _, _, media, params in ranked]
