"""Process configuration, the same way for every process: a dataclass of defaults, overridden
by a TOML file, then by ``LOA_<PROCESS>_*`` environment variables, then by command-line flags.

Each value is parsed by its field's type (numbers, booleans, ``host:port``,
``CHANNEL=host:port``, lists of them — comma-separated in the environment); each config class
checks its own ranges in ``__post_init__``. A bad value fails at start-up with a
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from wire.addr import parse_hostport as wire_hostport

T = TypeVar("T")

Addr = tuple[str, int]
Static = tuple[str, Addr]  # a channel pushed to a plain RTP receiver: CHANNEL=host:port


class ConfigError(ValueError):
    """A bad setting; ``field`` names the key so the operator knows what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_hostport(text: str, field: str) -> Addr:
    """``host:port`` or ``[v6]:port`` (``wire.addr``), a bad one a :class:`ConfigError`."""
    try:
        return wire_hostport(text)
    except ValueError as e:
        raise ConfigError(field, str(e)) from None


def parse_static(text: str, field: str) -> Static:
    channel, sep, dest = text.partition("=")
    if not sep or not channel.strip():
        raise ConfigError(field, f"{text!r} is not CHANNEL=host:port")
    addr = parse_hostport(dest, field)
    if addr[1] == 0:
        raise ConfigError(field, "a static destination needs a port")
    return (channel.strip(), addr)


def check_range(field: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(field, f"{value:g} is outside {lo:g}..{hi:g}")


def _parse(key: str, value: Any, kind: Any) -> Any:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or value == "":
            return None
        (kind,) = [a for a in args if a is not type(None)]
    if typing.get_origin(kind) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_parse(key, i, typing.get_args(kind)[0]) for i in items
                if not (isinstance(i, str) and not i.strip())]
    if kind in (Addr, Static):
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return parse_hostport(value, key) if kind == Addr else parse_static(value, key)
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).lower()
        if word in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return word in ("1", "true", "yes", "on")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
    if kind is str and not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def load(
    cls: type[T],
    flags: Mapping[str, Any],
    *,
    env_prefix: str,
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    section: str | None = None,
) -> T:
    """Build ``cls`` from defaults < TOML file < environment < flags (None flags are unset).

    The file is ``path`` or ``<env_prefix>CONFIG``; its keys may sit at the top level or in a
    ``[section]`` table.
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    path = path or env.get(f"{env_prefix}CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError("config", f"{path}: {e}") from None
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError("config", f"{path}: unknown key {key!r}")
            values[name] = _parse(name, value, hints[name])
    for name in names:
        raw = env.get(f"{env_prefix}{name.upper()}")
        if raw is not None:
            values[name] = _parse(name, raw, hints[name])
    for name, value in flags.items():
        if value is not None and name in names:
            values[name] = _parse(name, value, hints[name])
    return cls(**values)
