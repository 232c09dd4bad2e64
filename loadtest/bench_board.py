"""E-boards at a province's size: each zone's board read from its own items (the index by zone
that ``streamer/control/board.py`` keeps) against filtering every item for every zone (what it
did before, ``relevant`` over all items), in the same run.

A synthetic tree of ``--districts`` × ``--communes`` × ``--hamlets`` under one province (1,111
zones at the defaults), and ``--items`` board items: nine in ten addressed to a commune, the
rest to a district, and ``--province-wide`` emergencies to the province. Two things are timed
on the control loop, each as the median of ``--rounds``:

- **every board**: every zone's state, as a start, a takeover, a zone edit or an emergency for
  the whole province publishes;
- **one bulletin**: the zones one commune's new item shows on, and their states.

    python -m loadtest.bench_board [--items 300] [--rounds 7] [--write]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

from streamer.control.board import _LEVEL_ORDER, MAX_ITEMS, BoardFeed, relevant
from streamer.zones import ZoneTree
from wire.messages import BoardItem, BoardState

from ._report import machine, median, table, today, write_section

NOW = 1_000_000.0


def province(districts: int, communes: int, hamlets: int) -> ZoneTree:
    lines = ['[p]\nname = "Tỉnh"']
    for d in range(districts):
        lines.append(f'[p.d{d}]\nname = "Huyện {d}"')
        for c in range(communes):
            lines.append(f'[p.d{d}.c{c}]\nname = "Xã {c}"')
            lines += [f'[p.d{d}.c{c}.h{h}]\nname = "Ấp {h}"' for h in range(hamlets)]
    return ZoneTree.from_toml("\n".join(lines))


def items_for(tree: ZoneTree, n: int, province_wide: int, rng: random.Random) -> list[BoardItem]:
    communes = [z for z in tree.zones if z.count(".") == 2]
    districts = [z for z in tree.zones if z.count(".") == 1]
    out = []
    for i in range(n):
        if i < province_wide:
            zones, level = ["p"], "emergency"
        else:
            zones = [rng.choice(communes if rng.random() < 0.9 else districts)]
            level = "normal"
        out.append(BoardItem(id=f"i-{i}", zones=zones, title=f"Bản tin {i}", level=level,
                             start=NOW - 60))
    return out


def brute_state(items: list[BoardItem], zone: str) -> BoardState:
    """The old way: every item asked whether it is for ``zone``."""
    shown = [i for i in items if relevant(zone, i) and i.start <= NOW + 1
             and (i.expires is None or i.expires > NOW)]
    shown.sort(key=lambda i: (_LEVEL_ORDER[i.level], -i.start, i.id))
    return BoardState(zone=zone, items=shown[:MAX_ITEMS], ts=NOW)


def timed(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return median(times)


def run(args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(7)
    tree = province(args.districts, args.communes, args.hamlets)
    items = items_for(tree, args.items, args.province_wide, rng)
    feed = BoardFeed(SimpleNamespace(tree=tree, fleet=None), now=lambda: NOW)
    for item in items:
        feed._keep(item)
    zones = list(tree.zones)
    bulletin = BoardItem(id="new", zones=[zones[len(zones) // 2].rsplit(".", 1)[0]],
                         title="Bản tin mới", start=NOW - 1)

    def index_one() -> None:
        feed._keep(bulletin)
        for z in feed.shown_on(bulletin):
            feed.state(z)
        feed._drop(bulletin.id)

    def brute_one() -> None:
        every = [*items, bulletin]
        for z in [z for z in zones if relevant(z, bulletin)]:
            brute_state(every, z)

    for z in zones:  # the two ways agree before either is timed
        assert feed.state(z).items == brute_state(items, z).items, z
    return {
        "zones": len(zones),
        "index_all": timed(args.rounds, lambda: [feed.state(z) for z in zones]),
        "brute_all": timed(args.rounds, lambda: [brute_state(items, z) for z in zones]),
        "index_one": timed(args.rounds, index_one),
        "brute_one": timed(args.rounds, brute_one),
    }


def report(args: argparse.Namespace, r: dict[str, float]) -> str:
    rows = [
        [f"every board ({r['zones']:.0f} zones)", f"{r['brute_all'] * 1000:.1f} ms",
         f"{r['index_all'] * 1000:.1f} ms", f"**{r['brute_all'] / r['index_all']:.0f}×**"],
        ["one commune's bulletin", f"{r['brute_one'] * 1000:.2f} ms",
         f"{r['index_one'] * 1000:.2f} ms", f"**{r['brute_one'] / r['index_one']:.0f}×**"],
    ]
    return "\n".join([
        "## E-boards at a province's size (`loadtest/bench_board.py`)",
        "",
        f"Measured {today()} on {machine()}, with:",
        "",
        f"    python -m loadtest.bench_board --items {args.items} --rounds {args.rounds} --write",
        "",
        f"A synthetic province of {args.districts} districts × {args.communes} communes × "
        f"{args.hamlets} hamlets ({r['zones']:.0f} zones), {args.items} board items showing "
        f"(nine in ten for a commune, the rest for a district, {args.province_wide} "
        "province-wide emergencies). Both ways give the same boards (checked before timing); "
        "the times are the control loop's, medians of "
        f"{args.rounds} rounds.",
        "",
        table(["what", "every item for every zone (before)", "by zone (now)", "faster"], rows),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_board", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--districts", type=int, default=10)
    p.add_argument("--communes", type=int, default=10)
    p.add_argument("--hamlets", type=int, default=10)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--province-wide", type=int, default=5)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    text = report(args, run(args))
    print(text)
    if args.write:
        write_section("bench_board", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
