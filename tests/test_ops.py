"""The monitoring in ``ops/``: promtool accepts the config and rules and their unit tests pass; the
Grafana dashboard asks only for documented metrics; and a real Prometheus, configured from
``ops/prometheus/prometheus.yml``, scrapes a running streamer, relay and speaker and evaluates
the rules on what they export.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from loadtest.children import stop_process
from tests.harness.keys import with_trust
from tests.harness.net import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "loa.json"
ZONE = "brvt.vung-tau.thang-tam.kp-1"
JOBS = ("loa-streamer", "loa-relay", "loa-speaker")
TIMEOUT_S = 45.0  # the machine is shared: scrapes and rule runs every second may lag


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# --------------------------------------------------------------------------- promtool


@pytest.mark.parametrize("args", [("check", "config", "prometheus.yml"),
                                  ("check", "rules", "rules.yml"),
                                  ("test", "rules", "rules_test.yml")])
def test_promtool_accepts_the_ops_files(args: tuple[str, ...]) -> None:
    r = promtool(*args)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    (tmp_path / "rules.yml").write_text(rules.replace("up{job=\"loa-relay\"} == 0", "up{job=="))
    r = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert r.returncode != 0 and "rules.yml" in r.stdout + r.stderr


def test_rule_unit_tests_catch_a_weakened_alert(tmp_path: Path) -> None:
    """The unit tests would notice if the offline threshold no longer fired at 50 %."""
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    weakened = rules.replace("offline:ratio > 0.2", "offline:ratio > 0.6")
    assert weakened != rules
    (tmp_path / "rules.yml").write_text(weakened)
    shutil.copy(PROMETHEUS_DIR / "rules_test.yml", tmp_path)
    r = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "LoaSpeakersOffline" in r.stdout + r.stderr


# --------------------------------------------------------------------------- the dashboard

RECORDED = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)+\b")
METRIC = re.compile(r"\b(?:loa|process)_[a-z0-9_]+\b")


def documented_metrics() -> set[str]:
    """Names in the metric tables of docs/metrics.md (histograms as their base name)."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \| (?:counter|gauge|histogram) \|", doc, re.M))


def recorded_metrics() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_asks_only_for_documented_metrics() -> None:
    known = documented_metrics()
    assert {"loa_mixer_frames_total", "loa_time_to_air_seconds",
            "loa_event_loop_lag_seconds", "process_resident_memory_bytes"} <= known
    recorded = recorded_metrics()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    unknown = set()
    for expr in exprs:
        unknown |= set(RECORDED.findall(expr)) - recorded
        for name in METRIC.findall(RECORDED.sub("", expr)):
            if re.sub(r"_(bucket|sum|count)$", "", name) not in known:
                unknown.add(name)
    assert not unknown, f"not in docs/metrics.md or rules.yml: {sorted(unknown)}"


def test_dashboard_has_a_datasource_variable_used_by_every_panel() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in graphs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


# --------------------------------------------------------------------------- a real Prometheus


async def start_child(tmp_path: Path, name: str, *args: str) -> tuple[Any, dict[str, str]]:
    """A Loa process that prints one JSON line with its bound addresses once it listens."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    except TimeoutError:
        line = b""
    if not line:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{name} did not start: {log.read_text()}")
    return proc, json.loads(line)


@pytest.fixture
async def relay_and_speaker(streamer, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A relay and a speaker (``--http``) subscribed to the in-process streamer."""
    upstream = streamer.media_addr
    relay, relay_info = await start_child(
        tmp_path, "relay", "relay.main", "--id", "ops-relay", "--media", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--upstream", upstream, *with_trust([], tmp_path, "ops-relay"))
    try:
        speaker, speaker_info = await start_child(
            tmp_path, "speaker", "clients.speaker.main", "--id", "ops-speaker", "--channel", ZONE,
            "--upstream", upstream, "--bind", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--wav", str(tmp_path / "speaker.wav"), "--var-dir", str(tmp_path / "speaker"),
            *with_trust([], tmp_path, "ops-speaker"))
        try:
            yield {"loa-streamer": streamer.http_url.removeprefix("http://"),
                   "loa-relay": relay_info["http"].removeprefix("http://"),
                   "loa-speaker": speaker_info["http"]}
        finally:
            await stop_process(speaker)
    finally:
        await stop_process(relay)


def scrape_config(targets: dict[str, str]) -> dict[str, Any]:
    """ops/prometheus/prometheus.yml with the test stack's targets and 1 s intervals."""
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROMETHEUS_DIR / f) for f in cfg["rule_files"]]
    assert tuple(job["job_name"] for job in cfg["scrape_configs"]) == JOBS
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return cfg


@pytest.fixture
async def prometheus(relay_and_speaker: dict[str, str],
                     tmp_path: Path) -> AsyncIterator[str]:
    if not Path("/usr/bin/prometheus").exists():
        pytest.fail("prometheus is not installed: apt-get install prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(relay_and_speaker)))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        await until_ready(url, proc, log)
        yield url
    finally:
        await stop_process(proc)


async def until_ready(url: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.returncode is None, f"prometheus exited: {log.read_text()}"
            try:
                async with http.get(f"{url}/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"prometheus not ready in {TIMEOUT_S} s: {log.read_text()}")


async def query(url: str, promql: str) -> dict[str, float]:
    """Instant query → {job: value} (the jobs are one target each)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{url}/api/v1/query", params={"query": promql}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return {s["metric"].get("job", ""): float(s["value"][1]) for s in body["data"]["result"]}


async def rules(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/rules") as r:
        return list((await r.json())["data"]["groups"])


async def wait_for_values(url: str, checks: dict[str, Any]) -> None:
    """Poll each query until its check passes."""
    seen: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        seen = {q: await query(url, q) for q in checks}
        if all(check(seen[q]) for q, check in checks.items()):
            return
        await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/targets") as r:
        targets = [(t["labels"]["job"], t["health"], t["lastError"])
                   for t in (await r.json())["data"]["activeTargets"]]
    raise AssertionError(f"not reached in {TIMEOUT_S} s: {seen}; targets {targets}")


def every_job(positive: dict[str, float]) -> bool:
    return set(positive) == set(JOBS) and all(v > 0 for v in positive.values())


async def test_prometheus_scrapes_the_stack_and_runs_the_rules(streamer, prometheus) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{streamer.http_url}/api/v1/speakers", headers=streamer.admin,
            json={"id": "spk-ops-1", "zone": ZONE}) as r:
        assert r.status == 201, await r.text()  # registered, never online: no broker here
    await wait_for_values(prometheus, {
        "loa_mixer_frames_total": lambda v: v.get("loa-streamer", 0) > 0,
        'up{job=~"loa-.*"}': lambda v: v == {job: 1.0 for job in JOBS},
        "loa_event_loop_lag_seconds_count": every_job,
        "process_resident_memory_bytes": every_job,
        f'zone:loa_speakers_offline:ratio{{zone="{ZONE}"}}': lambda v: v == {"loa-streamer": 1.0},
    })
    groups = await rules(prometheus)
    assert {g["name"] for g in groups} == {"loa-recording", "loa-alerts"}
    deadline = time.monotonic() + TIMEOUT_S
    while True:  # the alert sees the recorded ratio one evaluation later
        loaded = [rule for g in await rules(prometheus) for rule in g["rules"]]
        offline = next(rule for rule in loaded if rule.get("name") == "LoaSpeakersOffline")
        if offline["state"] == "pending" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert offline["state"] == "pending", offline  # 100 % offline, for less than its 5 min
    assert {rule["health"] for rule in loaded} == {"ok"}, loaded  # every rule ran cleanly
