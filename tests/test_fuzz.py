"""Every parser that reads the network or another process, fed 10,000 fuzzed inputs each.

The targets (strategies and what must hold) live in ``loadtest/fuzz.py``, shared with the long
run of a million inputs per parser (``docs/BENCHMARKS.md``, "Fuzzing"). Deterministic: the
same inputs on every run (``derandomize``), no example database; each target's regressions
(inputs that once broke it) run first on every run.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from loadtest.fuzz import MQTT_MODELS, TARGETS, Target, run
from wire.messages import DEVICE_TOPICS

EXAMPLES = 10_000


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_takes_fuzzed_input_without_crashing(name: str) -> None:
    ran = run(TARGETS[name], EXAMPLES)
    assert ran.inputs >= EXAMPLES


def test_every_mqtt_payload_model_is_fuzzed() -> None:
    """A topic leaf added to the table without a model in the fuzz target fails here."""
    leaves = {leaf for topics in DEVICE_TOPICS.values() for leaf in
              (*topics.publishes, *topics.reads)} | {"emergency", "keys", "board"}
    fuzzed = {key.split("/")[0] for key in MQTT_MODELS}
    assert leaves == fuzzed
    assert {f"telemetry/{kind}" for kind, topics in DEVICE_TOPICS.items()
            if "telemetry" in topics.publishes} <= set(MQTT_MODELS)


def test_a_failing_check_fails_the_run() -> None:
    """The runner really runs the check on what the strategy draws (and on regressions)."""
    def check(data: bytes) -> None:
        assert b"\x07" not in data

    with pytest.raises(AssertionError):
        run(Target(st.lists(st.binary(min_size=8), min_size=1), check), 1000)
    with pytest.raises(AssertionError):
        run(Target(st.just([b""]), check, regressions=(b"\x07",)), 1)
