"""``bench compare`` on real runs: a planted 20% slowdown is flagged, a rerun is not.

A rerun must read within ``--threshold`` (5%) of its base, so this compares two step times and runs in the
timing pass, alone (``nox -s tests``): beside the parallel run's three workers a rerun of the planted step read
6.7% slower (95% CI 1.018-1.076) in a fresh-clone CI run and was flagged.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: every test here starts a Python process (tests/conftest.py) and compares step times
pytestmark = [pytest.mark.worker, pytest.mark.timing]

IMPL = "tests/fixtures/planted.py:TunableNumpyVAE"


def _run(tmp_path, run_id: str, slowdown: float) -> None:
    env = dict(os.environ, VAEBENCH_PLANTED_SLOWDOWN=str(slowdown))
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", IMPL, "--spec", "dense", "--kmer", "3",
                          "--batch", "16", "--steps", "200", "--results", str(tmp_path), "--run-id", run_id,
                          "--no-progress", "--no-preflight", "--no-peak"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def _compare(tmp_path, a: str, b: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "compare", a, b, "--results-dir", str(tmp_path),
                           "--fail-on-regression"], capture_output=True, text=True)


def test_compare_flags_a_planted_slowdown_and_not_a_rerun(tmp_path):
    _run(tmp_path, "base", 0.0)
    _run(tmp_path, "rerun", 0.0)
    _run(tmp_path, "slower", 0.2)
    same = _compare(tmp_path, "base", "rerun")
    assert same.returncode == 0, same.stdout + same.stderr
    slower = _compare(tmp_path, "base", "slower")
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "regression" in (slower.stdout + slower.stderr).lower()
    # stdout is a pipe here, as in `compare A B > f.txt`: every column whole (an 80-column cut read "medi…")
    assert "…" not in slower.stdout and "B median" in slower.stdout and "TunableNumpyVAE" in slower.stdout, \
        slower.stdout
