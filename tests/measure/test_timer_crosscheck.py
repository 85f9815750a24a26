"""The harness's ``device_step`` and pytest-benchmark time the same step the same way.

Run on the planted numpy adapter, whose step is a few hundred microseconds of numpy and a fixed
5 ms sleep (``tests/fixtures/planted.py:TunableNumpyVAE``): both timers must report it within 10%,
which catches a window divided by the wrong step count, a sync out of place or a batch fetch inside
the clock, while a neighbour's load on a 2-core CI machine cannot move a sleep. The same comparison
on the real builds, whose CPU steps move with load, is a benchmark (``nox -s microbench``,
``bench/microbench/test_crosscheck.py``); its figures are in docs/measurements.md.
"""

from __future__ import annotations

import pytest

from bench.microbench.crosscheck import THREADS, TOLERANCE, compare, describe

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

PLANTED = "tests/fixtures/planted.py:TunableNumpyVAE"


@pytest.mark.slow
@pytest.mark.timing
def test_pytest_benchmark_and_harness_device_step_agree(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEBENCH_PLANTED_SLOWDOWN", raising=False)
    for key, value in THREADS.items():
        monkeypatch.setenv(key, value)  # the settings compare() applies, undone after the test
    ratio, cell, bench = compare(PLANTED, tmp_path)
    assert abs(ratio - 1) <= TOLERANCE, describe(PLANTED, ratio, cell, bench)
    assert all(0.005 <= c < 0.05 for c in cell + bench), describe(PLANTED, ratio, cell, bench)  # the sleep is in both


def test_a_slower_step_moves_both_timers(tmp_path, monkeypatch):
    """Not a vacuous agreement: both timers see a step made 60% slower."""
    monkeypatch.setenv("VAEBENCH_PLANTED_SLOWDOWN", "0.6")
    from bench.microbench.crosscheck import benchmark_median, harness_median

    assert benchmark_median(PLANTED, tmp_path, 0) > 0.0075
    assert harness_median(PLANTED) > 0.0075
