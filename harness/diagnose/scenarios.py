"""Named leak anti-patterns, each with a clean twin, run with ``bench run --scenario NAME``.

Each scenario swaps the cell's train step for a loop body that makes a mistake
users really make (the user's own log has the last one). The twin is the
same loop with the one-line fix. The harness then has to show the growth,
name its cause from its counters, and clear the twin: that is the test of
the leak detector on real failures rather than on the injected control.

The framework code lives in ``impls/scenarios.py``; this module is the
framework-free catalogue the command line and the report read. Which impls can run a
scenario is not written here: each impl's record (``harness.impls_registry``) names the
scenarios it runs, so a new framework declares its own in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from harness.impls_registry import impls_for_scenario

#: where the scenarios' framework code lives
SCENARIO_STEPS_MODULE = "impls.scenarios"


class ScenarioError(ValueError):
    """An unknown scenario, or one that does not apply to the impl; one line."""


@dataclass(frozen=True)
class Scenario:
    name: str
    impls: tuple[str, ...]  # the built-in impls whose records name it (a twin: its anti-pattern)
    what: str
    expected_cause: str  # what attribution should find: compilation, python heap, native
    fix: str
    twin: str | None = None  # the clean twin's name (None for a twin itself)
    anti: str | None = None  # for a twin: the scenario it fixes


#: the anti-patterns, each with its twin; ``impls`` stays empty here and is filled from the records when read
_ANTI = [
    Scenario("torch-loss-total", (),
             "adds a monitoring loss tensor, never backpropagated, into a running total: every step's graph and saved "
             "activations stay alive",
             "native", "accumulate loss.item() or loss.detach(), never the loss tensor itself",
             twin="torch-loss-total-fixed"),
    Scenario("jax-jit-per-step", (),
             "wraps a function in jax.jit inside the loop, so every step traces and compiles anew",
             "compilation", "create the jitted function once, outside the training loop",
             twin="jax-jit-per-step-fixed"),
    Scenario("partial-last-batch", (),
             "ends every epoch with a partial batch of a new size, so jit/tf.function compile or trace again",
             "compilation", "drop the remainder (or pad the last batch) so every step sees one shape",
             twin="partial-last-batch-fixed"),
    Scenario("keras-tf-varying-batch", (),
             "feeds numpy batches of varying length to a hand-written @tf.function step over a Keras model",
             "compilation", "feed fixed-size batches (drop the remainder, as tf.data's batch(drop_remainder=True) does)",
             twin="keras-tf-varying-batch-fixed"),
]
_TWINS = [Scenario(s.twin, (), f"the clean twin of {s.name}: {s.fix}", "none", s.fix, anti=s.name)
          for s in _ANTI if s.twin]
_CATALOGUE: dict[str, Scenario] = {s.name: s for s in _ANTI + _TWINS}


class _Scenarios(Mapping[str, Scenario]):
    """The catalogue with each scenario's impls filled in from the records, when it is read."""

    def __getitem__(self, name: str) -> Scenario:
        sc = _CATALOGUE[name]
        return replace(sc, impls=impls_for_scenario(sc.anti or sc.name))

    def __iter__(self) -> Iterator[str]:
        return iter(_CATALOGUE)

    def __len__(self) -> int:
        return len(_CATALOGUE)


SCENARIOS: Mapping[str, Scenario] = _Scenarios()


def check_scenario(name: str, impl: str) -> Scenario:
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; scenarios are {', '.join(SCENARIOS)}")
    sc = SCENARIOS[name]
    if impl not in sc.impls:
        raise ScenarioError(f"scenario {name!r} applies to {', '.join(sc.impls) or 'no built-in impl'}, not {impl!r}")
    return sc


def scenario_step(name: str, model: Any, impl: str):
    """The step function for ``name`` (imports the framework code: worker only).

    Found by module name, as built-in adapters are (``harness.adapter.BUILTIN``): the harness
    sits below the builds and never imports them directly.
    """
    import importlib

    check_scenario(name, impl)
    impl_scenarios = importlib.import_module(SCENARIO_STEPS_MODULE)
    return impl_scenarios.build(name, model)
