"""``loa up``: the whole stack on one machine, for a first run, demos and end-to-end tests.

Starts private ``redis-server`` and Mosquitto under ``var/`` (unless ``LOA_REDIS_URL`` /
``LOA_MQTT_URL`` point at existing ones), then the streamer, one relay and simulated speakers
on the sample zone tree as child processes, each of which prints one JSON line with its
addresses (``spawn.py``). The relay and speakers are registered through the API as the first
admin, each with its own broker login (password files under ``var/secrets/``,
``provision.py``). Everything under ``var/`` is private to the user: directories 0700, files
0600, the private Redis behind a password (``services.py``). Writes ``var/loa-up.json``
(documented in the README, ``state.py``) for scripts and ops tools. Every child is supervised
(``supervise.py``): one that dies is restarted with backoff on the ports it had, and
``loa-up.json`` follows its new pid; Ctrl-C, SIGTERM or SIGHUP stop the children in
dependency order (speakers, relay, streamer, then the broker and Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from devstack.spawn import SAMPLE_SPEAKERS, bring_up
from devstack.state import Stack
from devstack.supervise import StartError, Supervisor

log = logging.getLogger("loa.up")


async def up(args: argparse.Namespace) -> int:
    var = Path(args.var_dir).resolve()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor()
    starting = asyncio.create_task(bring_up(args, var, sup))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped while coming up
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StartError, RuntimeError):
            await starting
        await sup.stop()
        print("Loa stopped.", flush=True)
        return 0
    try:
        stack = starting.result()
    except (StartError, RuntimeError) as e:
        print(f"loa up: {e}", file=sys.stderr)
        stopping.cancel()
        await sup.stop()
        return 1
    stack.write_state()
    sup.on_start = lambda child: stack.write_state()
    print(banner(stack), flush=True)
    await stopping
    t = time.monotonic()
    await sup.stop()
    stack.state_file.unlink(missing_ok=True)
    log.info("stopped %d processes in %.2f s", len(sup.children), time.monotonic() - t)
    print("Loa stopped.", flush=True)
    return 0


def banner(stack: Stack) -> str:
    """What ``loa up`` prints once everything serves: where things are, what to try."""
    state, spk_dir = stack.state(), stack.var / "speakers"
    url = state["streamer_url"]
    return (f"Loa is up.\n  console    {url}/  (the operator console: sign in as admin)\n"
            f"  streamer   {url}  (API {url}/api/v1/broadcasts)\n"
            f"  studio     {url}/studio  (browser microphone, push to talk)\n"
            f"  ingest     srtp://{state['streamer_ingest']}  (register: loa ctl input add)\n"
            f"  relay      {state['relay_urls'][0]}\n  speakers   {len(state['speakers'])}, "
            f"recording to {spk_dir}\n  state      {stack.state_file}\n  listen     {url}/listen/"
            f"{SAMPLE_SPEAKERS[0].zone}.ogg?token=…  (POST /api/v1/listen gives the token)\n"
            f"  try        loa ctl login && loa ctl broadcast "
            f"--zone brvt.vung-tau.thang-tam --tone 1000 --seconds 5 --wait-reach\n"
            f"  admin      credentials in {state['admin_credentials']}\n"
            f"A child that dies is restarted; Ctrl-C stops everything.")


def run(argv: list[str]) -> int:
    # what loa up and its children write under var/ (logs, state, secrets, Redis's dump) is
    # for this user alone: files 0600, directories 0700 (spawn.tighten, services.UMASK)
    os.umask(0o077)
    p = argparse.ArgumentParser(prog="loa up", description="Run the whole stack on this machine.")
    p.add_argument("--var-dir", default="var", help="state, logs and recordings (default var/)")
    p.add_argument("--host", default="127.0.0.1", help="address every process binds")
    p.add_argument("--http-port", type=int, default=8000, help="streamer HTTP port (0 = any)")
    p.add_argument("--media-port", type=int, default=0,
                   help="streamer media UDP port (default 0 = any, kept across restarts)")
    p.add_argument("--relay-media-port", type=int, default=0,
                   help="the relay's media UDP port (default 0 = any, kept across restarts)")
    p.add_argument("--relay-http-port", type=int, default=8081,
                   help="the relay's HTTP port, scraped by ops/prometheus (0 = any)")
    p.add_argument("--ingest-port", type=int, default=5006,
                   help="streamer SRTP ingest UDP port (0 = any)")
    p.add_argument("--speakers", type=int, default=len(SAMPLE_SPEAKERS),
                   choices=range(0, len(SAMPLE_SPEAKERS) + 1), metavar="N")
    p.add_argument("--ptime-ms", type=int, default=20, choices=(20, 40, 60))
    p.add_argument("--delay-ms", type=int, default=300, help="speaker playout delay")
    return asyncio.run(up(p.parse_args(argv)))
