"""The systemd units in ``ops/systemd/`` (issue 14, deployment): each passes
``systemd-analyze verify`` with no warning, restarts whatever stopped it, runs as the ``loa``
user with no privileges on a read-only system, and reads a config file whose example beside it
loads with the process's own config loader (so the example cannot drift from the code)."""

from __future__ import annotations

import configparser
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load
from tests.harness.keys import TEST_KEY

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "ops" / "systemd"
INSTALLED = "/opt/loa/.venv/bin/loa"  # where the units expect Loa (docs/operations.md)
#: unit → (config module, config class, environment prefix, TOML section)
CONFIGS = {
    "streamer": ("streamer.app", "StreamerConfig", "LOA_STREAMER_", None),
    "relay": ("relay.main", "RelayConfig", "LOA_RELAY_", "relay"),
    "speaker": ("clients.speaker.config", "SpeakerConfig", "LOA_SPEAKER_", None),
}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
             "SystemCallArchitectures": "native"}


def verify(unit: Path, tmp_path: Path) -> str:
    """``systemd-analyze verify`` on ``unit`` with Loa where this checkout has it: what it said
    (warnings included: it exits 0 on a value it ignores), or "" when all is well."""
    local = tmp_path / unit.name
    loa = Path(sys.executable).parent / "loa"
    assert loa.exists(), loa
    local.write_text(unit.read_text().replace(INSTALLED, str(loa)))
    run = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify",
                          "--man=no", str(local)], capture_output=True, text=True, timeout=60)
    said = (run.stdout + run.stderr).strip()
    return said or ("" if run.returncode == 0 else f"exit {run.returncode}")


def service(unit: Path) -> dict[str, str]:
    ini = configparser.ConfigParser(strict=False, interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    ini.read_string(unit.read_text())
    return dict(ini["Service"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_unit_verifies_and_is_hardened(name: str, tmp_path: Path) -> None:
    unit = UNITS / f"loa-{name}.service"
    assert verify(unit, tmp_path) == ""
    s = service(unit)
    assert (s["Restart"], s["User"], s["Group"]) == ("always", "loa", "loa")
    assert float(s["RestartSec"]) <= 2
    assert {k: s.get(k) for k in HARDENING} == HARDENING
    assert s["StateDirectory"] == f"loa/{name}"
    assert s["ExecStart"] == f"{INSTALLED} {name} --config /etc/loa/{name}.toml"


#: example config → the unit it is for
EXAMPLES = {**{name: name for name in CONFIGS}, "streamer-pair": "streamer"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_config_loads(name: str, tmp_path: Path) -> None:
    module, cls_name, prefix, section = CONFIGS[EXAMPLES[name]]
    text = (UNITS / f"{name}.toml").read_text()
    text = (text.replace("/etc/loa", str(tmp_path / "etc"))
            .replace("/var/lib/loa", str(tmp_path / "var"))
            .replace("@STREAM_KEY@", TEST_KEY.public_text))
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    cls = getattr(importlib.import_module(module), cls_name)
    cfg = load(cls, {}, env_prefix=prefix, path=str(path), env={}, section=section)
    assert str(tmp_path / "var") in repr(cfg)  # the state directory is the unit's
    if name == "streamer-pair":
        assert cfg.ha_lease_ms > 0 and cfg.redis_url.startswith("redis+sentinel://")


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a value systemd ignores, and a program that is not there."""
    text = (UNITS / "loa-relay.service").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "loa-relay.service").write_text(text.replace("Restart=always", "Restart=sometimes"))
    assert "sometimes" in verify(bad / "loa-relay.service", tmp_path)
    (bad / "loa-relay.service").write_text(text.replace(INSTALLED, "/nonexistent/loa"))
    assert "not executable" in verify(bad / "loa-relay.service", tmp_path / "bad")
