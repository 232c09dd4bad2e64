"""The peak benchmark: the province it generates, the bulletins it writes, and its quick run.

The quick run is the real command (``python -m loadtest.bench_peak --quick``): redis-server,
Mosquitto and ``loa streamer`` as processes on a generated 10-commune province, 10 bulletins
synthesised and uploaded through the API, scheduled for one frame beside a relayed stream,
an emergency in the coastal communes, a short ramp. It asserts that the run happened as
described (every schedule fired, one programme per commune, the relay playing, the emergency
in exactly the coastal channels, the control plane answering), never how fast it was: the
figures belong in ``docs/BENCHMARKS.md``, written by the full run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from loadtest.bench_peak import QUICK
from loadtest.province import CHARS_PER_S, bulletin, province
from streamer.zones import ZoneTree

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def test_the_committed_province_is_the_generated_one() -> None:
    committed = (ROOT / "loadtest" / "zones-province-82.toml").read_text("utf-8")
    assert committed == province(82).toml()


@pytest.mark.parametrize("communes", [20, 82, 300])
def test_a_province_of_communes_with_3_to_5_hamlets(communes: int) -> None:
    prov = province(communes)
    tree = ZoneTree.from_toml(prov.toml())  # refuses duplicate codes and SSRC collisions
    zones = [c.zone(prov.root) for c in prov.communes]
    assert len(set(zones)) == communes
    for c, zid in zip(prov.communes, zones, strict=True):
        assert tree.zones[zid].code == c.code
        assert 3 <= len(tree.zones[zid].children) <= 5
        assert all(tree.zones[h].is_leaf for h in tree.zones[zid].children)
    assert len(tree.leaves()) == prov.leaves
    assert sum(c.coastal for c in prov.communes) == min(20, communes // 4)
    assert province(communes).toml() == prov.toml()  # the same for the same seed


def test_every_commune_has_its_own_bulletin_long_enough() -> None:
    prov, day = province(82), date.today() + timedelta(days=400)  # any day will do
    texts = [bulletin(c, i, day, 70) for i, c in enumerate(prov.communes)]
    assert len(set(texts)) == len(texts)
    for c, text in zip(prov.communes, texts, strict=True):
        assert c.name.split(" ", 1)[1] in text and day.strftime("%d/%m/%Y") in text
        assert len(text) >= 70 * CHARS_PER_S


@pytest.mark.realtime
def test_quick_run_reports_the_peak(tmp_path: Path) -> None:
    out = tmp_path / "peak.json"
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench_peak", "--quick", "--report",
                           str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    prov = province(r["communes"])
    assert r["tts"]["bulletins"] == r["communes"] == QUICK["communes"]
    pk = r["peak"]
    assert pk["fired"] == pk["booked"] == r["communes"] + 1  # every bulletin and the relay
    assert pk["relay_health"] == "playing"
    assert pk["whole"]["frames"] > 0 and pk["before_emergency"]["frames"] > 0
    # one programme per commune (its own bulletin) until the emergency
    assert pk["before_emergency"]["programmes"] >= r["communes"]
    coastal = sum(len(c.hamlets) for c in prov.communes if c.coastal)
    assert pk["emergency_channels"] == coastal > 0
    assert pk["emergency_time_to_air_s"] is not None  # it reached the air
    assert r["control"]["polls"] > 0
    assert r["control"]["errors"] == 0 and r["control"]["mqtt_down"] == 0
    assert r["ramp"] and all(s["frames"] > 0 for s in r["ramp"])
    for step in r["ramp"]:  # a programme for each channel's own clip, one for the relay
        assert round(step["programmes"]) == step["target"] + 1, step
    assert f"## The 06:00 peak, {QUICK['communes']} communes" in proc.stdout
