"""``loa``: one entry point, one subcommand per process; each dispatches to its package.

This is the only module that knows every process: the server (``streamer``), the relay, the
clients, the dev stack and the load tests each keep their own command line, imported here only
when its subcommand runs, so no process package needs to import another to be started.
"""

from __future__ import annotations

import gc
import logging
import sys

from common.config import ConfigError


def _streamer(argv: list[str]) -> int:
    from streamer.cli import run

    return run(argv)


def _relay(argv: list[str]) -> int:
    from relay.main import main

    return main(argv)


def _speaker(argv: list[str]) -> int:
    from clients.speaker.main import run

    return run(argv)


def _token(argv: list[str]) -> int:
    from streamer.tokens import run

    return run(argv)


def _up(argv: list[str]) -> int:
    from devstack.up import run

    return run(argv)


def _studio(argv: list[str]) -> int:
    from clients.studio import main

    return main(argv)


def _ctl(argv: list[str]) -> int:
    from clients.ctl import run

    return run(argv)


def _loadtest(argv: list[str]) -> int:
    from loadtest.cli import main

    return main(argv)


COMMANDS = {
    "up": (_up, "the whole stack on this machine (streamer, relay, simulated speakers)"),
    "streamer": (_streamer, "the central mixer and API"),
    "relay": (_relay, "a fan-out relay"),
    "speaker": (_speaker, "a software IP speaker"),
    "studio": (_studio, "send live audio (file, sound card, tone) to the ingest"),
    "ctl": (_ctl, "operator commands over the HTTP API"),
    "token": (_token, "issue a device's subscription token with the streamer's key"),
    "loadtest": (_loadtest, "simulated speakers against a stack: loss, latency, time-to-air"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: loa COMMAND [options]\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<10} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ConfigError as e:
        print(f"loa {argv[0]}: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # The process is done: spare the collector a walk over every object of numpy, PyAV
        # and friends at exit (a third of a second of CPU per process, several times that on
        # a busy machine; loa up stops ten of them in its Ctrl-C budget).
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
