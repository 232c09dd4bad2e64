"""The tests' layout: a test module never imports another test module. What tests share lives
in ``tests/harness/`` (and fixtures in ``conftest.py``), so that each module can be read, run
and changed on its own."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def is_test_module(dotted: str) -> bool:
    return dotted.rpartition(".")[2].startswith("test_")


def imports_of_test_modules(source: str, filename: str = "<source>") -> list[str]:
    """Every import in ``source`` that names a ``test_*`` module: ``import tests.test_x``,
    ``from tests.test_x import y``, ``from .test_x import y``, ``from tests import test_x``,
    ``from . import test_x``, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if any(map(is_test_module, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if any(is_test_module(part) for part in (node.module or "").split(".")):
                found.append(module)
            found += [f"{module}.{a.name}".replace("..", ".") for a in node.names
                      if is_test_module(a.name)]
    return found


def test_the_check_finds_every_form_of_importing_a_test_module() -> None:
    bad = """
import tests.test_mqtt
import numpy, tests.test_relay as relay
from tests.test_control_api import call
from .test_webrtc import offer
from tests import test_speaker_e2e
from . import conftest, test_fanout

def later():
    from tests.test_webrtc import _offer_with
"""
    assert imports_of_test_modules(bad) == [
        "tests.test_mqtt", "tests.test_relay", "tests.test_control_api", ".test_webrtc",
        "tests.test_speaker_e2e", ".test_fanout", "tests.test_webrtc"]
    fine = """
import pytest
from tests.harness.api import call
from tests.conftest import DAYTIME
from tests.harness import test_tones_are_not_here_but_this_would_be_found
"""
    assert imports_of_test_modules(fine) == [
        "tests.harness.test_tones_are_not_here_but_this_would_be_found"]
    assert imports_of_test_modules("from tests.harness.wait import until\nimport latest") == []


def test_no_test_module_imports_another() -> None:
    modules = sorted(TESTS.glob("test_*.py"))
    assert len(modules) > 40  # the glob found the suite
    offenders = {p.name: found for p in modules
                 if (found := imports_of_test_modules(p.read_text(), str(p)))}
    assert offenders == {}, ("move what they share into tests/harness/", offenders)
