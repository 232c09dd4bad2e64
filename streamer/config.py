"""Process configuration: a dataclass of defaults, overridden by a TOML file, then by ``LOA_*``
environment variables, then by command-line flags. Bad values fail at start-up naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad setting; ``field`` names the key so the operator knows what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


Addr = tuple[str, int]


def parse_hostport(text: str, field: str) -> Addr:
    """``host:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(field, f"{text!r} is not host:port")
    try:
        port = int(rest)
    except ValueError:
        raise ConfigError(field, f"port in {text!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ConfigError(field, f"port {port} out of range")
    return (host, port)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    # annotations are strings here (postponed evaluation): "int", "str | None", …
    names = {"int": int, "float": float, "str": str, "bool": bool}
    want = names.get(str(kind).split("|")[0].strip())
    if value is None or want is None:
        return value
    if want is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected true or false, got {value!r}")
    try:
        return want(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {want.__name__}, got {value!r}") from None


def load(cls: type[T], path: str | None, env_prefix: str, flags: dict[str, Any]) -> T:
    """Build ``cls`` from defaults < TOML file < environment < flags (None flags are unset)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError("config", f"{path}: {e}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError("config", f"{path}: unknown key {key!r}")
            values[name] = value
    for name in fields:
        env = os.environ.get(f"{env_prefix}{name.upper()}")
        if env is not None:
            values[name] = env
    for name, value in flags.items():
        if value is not None and name in fields:
            values[name] = value
    out = {n: _coerce(n, v, fields[n].type) for n, v in values.items()}
    return cls(**out)
