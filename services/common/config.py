"""One YAML file per service, overridable by env and flags, validated at start.

Precedence (as NVIDIA's device plugin documents it): command-line flag > environment variable > file >
model default. Every service declares a pydantic model; an unknown or invalid key fails start-up with an
error that names the key and where the value came from.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and its source."""


class ConfigModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port); host "" means every interface."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:8080, :9394 or [::]:8443)")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} of {address!r} is out of range")
    return host.removeprefix("[").removesuffix("]"), port


def check_grpc_bind(address: str) -> str:
    """A gRPC listen address: `host:port` (port 0 picks a free one) or `unix:PATH`."""
    if address.startswith("unix:"):
        if not address.removeprefix("unix:").strip("/"):
            raise ValueError(f"{address!r} names no socket path (e.g. unix:/run/kube-vgpu/grpc.sock)")
        return address
    split_host_port(address)
    return address


def check_server_url(url: str) -> str:
    """An API server URL: http(s)://host[:port], so a typo fails at start instead of retrying forever."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not an http:// or https:// URL of an API server (e.g. https://10.0.0.1:6443)"
        )
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port's range only when it is read
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


GrpcBindAddress = Annotated[str, AfterValidator(check_grpc_bind)]


def apply_env_aliases(environ: MutableMapping[str, str], aliases: Mapping[str, str], env_prefix: str) -> None:
    """Let a foreign env name (HAMi's DaemonSet sets NODE_NAME, HOOK_PATH) configure a key, unless our own
    `<PREFIX><KEY>` is set too."""
    for foreign, key in aliases.items():
        ours = env_prefix + key.upper()
        if foreign in environ and ours not in environ:
            environ[ours] = environ[foreign]


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _env_name(prefix: str, path: Sequence[str]) -> str:
    return prefix + "__".join(p.upper() for p in path)


def _parse_scalar(raw: str) -> Any:
    """Env and flag values arrive as text; JSON lets a list or mapping be passed too."""
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _set_path(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = target
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key of the model, nested sections included (for env lookup)."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_field_paths(annotation, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def read_config_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top, found {type(data).__name__}")
    return data


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per top-level scalar field (`http_bind` -> `--http-bind`), plus --config and --set."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file of this service")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override any key, dotted for nested sections (e.g. --set log.level=debug); repeatable",
    )
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        parser.add_argument(
            _flag_name(name), dest=f"cfg__{name}", metavar="VALUE", default=None, help=info.description
        )


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            overrides[key.removeprefix("cfg__")] = _parse_scalar(value)
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        _set_path(overrides, key.strip().split("."), _parse_scalar(value))
    return overrides


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    model: type[ModelT],
    *,
    path: str | Path | None = None,
    env_prefix: str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ModelT:
    """Build the validated config: file, then `<PREFIX><KEY>` env vars (`__` for nesting), then flags."""
    environ = os.environ if environ is None else environ
    sources: dict[tuple[str, ...], str] = {}
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        for key_path in _flatten(data):
            sources[key_path] = f"file {path}"
    for key_path in _field_paths(model):
        env_key = _env_name(env_prefix, key_path)
        if env_key in environ:
            _set_path(data, key_path, _parse_scalar(environ[env_key]))
            sources[key_path] = f"env {env_key}"
    if overrides:
        data = _merge(data, overrides)
        for key_path in _flatten(dict(overrides)):
            sources[key_path] = "flag " + (
                _flag_name(key_path[0]) if len(key_path) == 1 else "--set " + ".".join(key_path)
            )
    return validate_config(model, data, what=model.__name__, sources=sources)


def validate_config(
    model: type[ModelT],
    data: Mapping[str, Any],
    *,
    what: str,
    sources: Mapping[tuple[str, ...], str] | None = None,
    default_source: str = "default",
) -> ModelT:
    """Validate, turning pydantic's errors into one message naming each bad key and its source."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources or {}, what, default_source)) from None


def _flatten(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, (*prefix, str(key))))
        else:
            out.append((*prefix, str(key)))
    return out


def _describe(
    exc: ValidationError, sources: Mapping[tuple[str, ...], str], what: str, default_source: str
) -> str:
    lines = [f"invalid {what}:"]
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "<root>"
        source = next(
            (sources[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in sources), default_source
        )
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {message} (from {source}, got {err.get('input')!r})")
    return "\n".join(lines)


class KubeAccess(ConfigModel):
    """How a service reaches the API server (the client itself is built by services.common.kube)."""

    server: str | None = Field(
        None, description="API server URL without auth (kube-local), e.g. http://127.0.0.1:8001"
    )

    @field_validator("server")
    @classmethod
    def _server_is_a_url(cls, value: str | None) -> str | None:
        return None if value is None else check_server_url(value)

    kubeconfig: str | None = Field(None, description="path of a kubeconfig file; default $KUBECONFIG")
    context: str | None = Field(None, description="kubeconfig context to use")
