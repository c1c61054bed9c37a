"""Config loading: file < env < flags, and errors that name the bad key and where it came from."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import Field

from services.common.config import (
    ConfigError,
    ConfigModel,
    add_config_flags,
    flag_overrides,
    load_config,
)
from services.common.log import LogConfig


class _Section(ConfigModel):
    retries: int = Field(3, ge=0)


class _ExampleConfig(ConfigModel):
    http_bind: str = "127.0.0.1:8080"
    weight: float = Field(1.0, gt=0)
    enabled: bool = False
    names: list[str] = Field(default_factory=list)
    section: _Section = Field(default_factory=_Section)
    log: LogConfig = Field(default_factory=LogConfig)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    return path


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _ExampleConfig)
    return flag_overrides(parser.parse_args(list(argv)))


def test_defaults_when_nothing_is_given() -> None:
    cfg = load_config(_ExampleConfig, env_prefix="T_", environ={})
    assert cfg.http_bind == "127.0.0.1:8080"
    assert cfg.section.retries == 3
    assert cfg.log.level == "info"


@pytest.mark.parametrize(
    ("file_text", "environ", "argv", "expected_bind", "expected_retries"),
    [
        ("http_bind: file:1\n", {}, [], "file:1", 3),
        ("http_bind: file:1\n", {"T_HTTP_BIND": "env:2"}, [], "env:2", 3),
        ("http_bind: file:1\n", {"T_HTTP_BIND": "env:2"}, ["--http-bind", "flag:3"], "flag:3", 3),
        ("section: {retries: 5}\n", {"T_SECTION__RETRIES": "7"}, [], "127.0.0.1:8080", 7),
        (
            "section: {retries: 5}\n",
            {"T_SECTION__RETRIES": "7"},
            ["--set", "section.retries=9"],
            "127.0.0.1:8080",
            9,
        ),
    ],
)
def test_precedence_flag_over_env_over_file(
    tmp_path: Path,
    file_text: str,
    environ: dict[str, str],
    argv: list[str],
    expected_bind: str,
    expected_retries: int,
) -> None:
    cfg = load_config(
        _ExampleConfig,
        path=_write(tmp_path, file_text),
        env_prefix="T_",
        environ=environ,
        overrides=_flags(*argv),
    )
    assert cfg.http_bind == expected_bind
    assert cfg.section.retries == expected_retries


def test_env_values_are_coerced_and_lists_accept_json() -> None:
    cfg = load_config(
        _ExampleConfig,
        env_prefix="T_",
        environ={"T_ENABLED": "true", "T_WEIGHT": "2.5", "T_NAMES": '["a", "b"]'},
    )
    assert cfg.enabled is True
    assert cfg.weight == 2.5
    assert cfg.names == ["a", "b"]


@pytest.mark.parametrize(
    ("file_text", "environ", "argv", "needles"),
    [
        ("htp_bind: x\n", {}, [], ["htp_bind: unknown key", "file "]),
        ("section: {retries: -1}\n", {}, [], ["section.retries", "greater than or equal to 0", "file "]),
        ("", {"T_WEIGHT": "zero"}, [], ["weight", "env T_WEIGHT"]),
        ("", {}, ["--weight", "-3"], ["weight", "flag --weight"]),
        ("", {}, ["--set", "section.retires=1"], ["section.retires: unknown key", "--set section.retires"]),
        ("log: {level: loud}\n", {}, [], ["log.level", "'loud'"]),
    ],
)
def test_errors_name_the_key_and_its_source(
    tmp_path: Path, file_text: str, environ: dict[str, str], argv: list[str], needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            _ExampleConfig,
            path=_write(tmp_path, file_text),
            env_prefix="T_",
            environ=environ,
            overrides=_flags(*argv),
        )
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("a: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_broken_files_are_reported_with_their_path(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(_ExampleConfig, path=path, env_prefix="T_", environ={})
    assert str(path) in str(info.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(_ExampleConfig, path=tmp_path / "absent.yaml", env_prefix="T_", environ={})


def test_set_without_equals_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        _flags("--set", "section.retries")
