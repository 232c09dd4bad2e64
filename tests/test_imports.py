"""The layout's import rules: each process depends on the contract, not on another process.

``wire/`` is the contract every process shares and imports nothing else of the project;
``common/`` (config, process metrics, private files) and the shared edges (``fanout/``,
``device/``) build on it; the server (``streamer/``), the relay and the clients each build on
those and never on one another. Only the ``loa`` dispatcher, the dev stack, the load tests and
the tests may import everything. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package → the project's packages it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "wire": frozenset(),
    "common": frozenset({"wire"}),
    "fanout": frozenset({"wire", "common"}),
    "device": frozenset({"wire", "common"}),
    "streamer": frozenset({"wire", "common", "fanout", "device"}),
    "relay": frozenset({"wire", "common", "fanout", "device"}),
    "clients": frozenset({"wire", "common", "fanout", "device"}),
}
PROJECT = frozenset(ALLOWED) | {"loa", "devstack", "loadtest", "tests"}


def imported(source: str, package: str) -> set[str]:
    """The project's top-level packages that ``source`` (a module of ``package``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return (found & PROJECT) - {package}


def violations(source: str, package: str) -> set[str]:
    """What ``source``, a module of ``package``, imports that the rules forbid."""
    return imported(source, package) - ALLOWED[package]


def test_the_check_catches_a_forbidden_import_wherever_it_is():
    bad = (
        "import relay.main\n"
        "from streamer.control import fleet\n"
        "def later():\n"
        "    from devstack.up import run\n"
        "    import loadtest.cli as lt\n"
        "from . import sibling\n"
        "from wire.packet import parse\n"
    )
    assert violations(bad, "clients") == {"relay", "streamer", "devstack", "loadtest"}
    assert violations(bad, "streamer") == {"relay", "devstack", "loadtest"}
    assert violations("import numpy\nfrom aiohttp import web\n", "wire") == set()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_it_builds_on(package):
    assert (ROOT / package).is_dir(), f"{package}/ is gone: update the rules"
    bad = {str(path.relative_to(ROOT)): sorted(found)
           for path in sorted((ROOT / package).rglob("*.py"))
           if (found := violations(path.read_text(encoding="utf-8"), package))}
    assert bad == {}, f"{package}/ may import only {sorted(ALLOWED[package])} of the project"
