"""What a row records of the environment it ran in: every variable that changes speed or what XLA compiles."""

from __future__ import annotations

import ast

from fixtures.paths import REPO

from harness.measure.fingerprint import PERFORMANCE_ENV, machine_fingerprint
from harness.spec.schema import Settings


def suite_env() -> dict[str, str]:
    """``TEST_ENV`` of the noxfile, read without importing nox."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TEST_ENV" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("noxfile.py has no TEST_ENV")


def test_every_variable_the_suite_sets_is_recorded_in_its_rows():
    """The suite's rows must say they ran on one thread and JAX's older random bits (noxfile.py says why)."""
    env = suite_env()
    assert env["JAX_THREEFRY_PARTITIONABLE"] == "0"
    assert set(env) <= set(PERFORMANCE_ENV), set(env) - set(PERFORMANCE_ENV)


def test_inherited_env_holds_what_is_set_and_nothing_else(monkeypatch):
    monkeypatch.setenv("JAX_THREEFRY_PARTITIONABLE", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("VAEBENCH_UNRELATED", "x")
    got = machine_fingerprint(Settings())["inherited_env"]
    assert got["JAX_THREEFRY_PARTITIONABLE"] == "0" and got["OMP_NUM_THREADS"] == "3"
    assert "MALLOC_ARENA_MAX" not in got and "VAEBENCH_UNRELATED" not in got
