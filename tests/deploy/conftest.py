"""Fixtures of the deploy/ checks: kustomizations rendered once per session with `kubectl kustomize`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from deploy_helpers import Obj, Render, needs_kubectl, run_kustomize


class Renderer:
    """Renders kustomization directories with `kubectl kustomize`, each once per session."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[Obj]] = {}

    def __call__(self, directory: Path) -> list[Obj]:
        key = directory.resolve()
        if key not in self._cache:
            self._cache[key] = run_kustomize(key)
        return self._cache[key]

    def prefetch(self, directories: Iterable[Path]) -> None:
        """Render several directories in parallel (kubectl is a separate process each time)."""
        todo = [d.resolve() for d in directories if d.resolve() not in self._cache]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for directory, objects in zip(todo, pool.map(run_kustomize, todo), strict=True):
                self._cache[directory] = objects


@pytest.fixture(scope="session")
def render() -> Render:
    needs_kubectl()
    return Renderer()


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for generated kustomizations (they reference deploy/ by relative path)."""
    yield tmp_path_factory.mktemp("kustomize")
