"""The real builds' two timers side by side: ``nox -s microbench`` runs this after the step benchmarks.

A measurement of each build, with the figures printed; see :mod:`bench.microbench.crosscheck` for the
method. The suite's test of the timers themselves is ``tests/measure/test_timer_crosscheck.py``.
"""

from __future__ import annotations

import pytest

from bench.microbench.crosscheck import THREADS, TOLERANCE, compare, describe
from harness.adapter import is_installed


@pytest.mark.parametrize("impl", ["torch", "flax"])
def test_harness_device_step_agrees_with_pytest_benchmark(impl, tmp_path, monkeypatch):
    if not is_installed(impl):
        pytest.skip(f"{impl} is not installed")
    for key, value in THREADS.items():
        monkeypatch.setenv(key, value)
    ratio, cell, bench = compare(impl, tmp_path)
    print(describe(impl, ratio, cell, bench))
    assert abs(ratio - 1) <= TOLERANCE, describe(impl, ratio, cell, bench)
