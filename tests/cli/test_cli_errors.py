"""Every bad input to ``python -m bench`` ends as ONE line on stderr and exit status 2.

Run as real subprocesses so what is checked is exactly what a user sees: no traceback, no
usage block, no framework import. ``run`` cases use the numpy-only planted adapter and fail
before any cell starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.paths import REPO

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

NUMPY_IMPL = "tests/fixtures/planted.py:NumpyVAE"
K3_WIDTH = 32  # canonical 3-mers


def bench(*args: str, results: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error" in lines[0]
    return lines[0]


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--impl", NUMPY_IMPL, "--kmer", "3", "--steps", "2", "--batch", "4", "--no-progress",
            "--no-preflight", "--no-peak", "--results", str(tmp_path / "results"), *extra]


def profiles(rows: int = 64, width: int = K3_WIDTH) -> np.ndarray:
    x = np.random.default_rng(0).random((rows, width), dtype=np.float32)
    return x / x.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ params


def test_kmer_zero():
    line = one_error_line(bench("params", "--kmer", "0"))
    assert "--kmer" in line and "at least 1" in line


def test_conv_final_kmer6_names_pool_and_nearest_lengths():
    line = one_error_line(bench("params", "--kmer", "6", "--spec", "conv-final"))
    assert "max_pool1d" in line
    assert "2080" in line  # the length that does not divide
    assert "2048" in line and "2112" in line


def test_unknown_spec_name():
    line = one_error_line(bench("params", "--kmer", "3", "--spec", "no-such-spec"))
    assert "no-such-spec" in line
    assert "dense" in line  # lists the presets


# --------------------------------------------------------------------------- run --data


def test_data_with_nan_names_row_and_column(tmp_path):
    x = profiles()
    x[17, 5] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, x)
    line = one_error_line(bench(*run_args(tmp_path, "--data", str(path))))
    assert "row 17" in line and "column 5" in line
    assert "nan" in line.lower()
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.jsonl"))


def test_data_with_three_dimensions(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, profiles().reshape(8, 8, K3_WIDTH))
    line = one_error_line(bench(*run_args(tmp_path, "--data", str(path))))
    assert "3 dimensions" in line and "2-D" in line


def test_data_above_one(tmp_path):
    x = profiles()
    x[3, 30] = 7.5
    path = tmp_path / "counts.npy"
    np.save(path, x)
    line = one_error_line(bench(*run_args(tmp_path, "--data", str(path))))
    assert "row 3" in line and "column 30" in line and "7.5" in line
    assert "[0, 1]" in line


def test_data_missing_file(tmp_path):
    path = tmp_path / "nowhere.npy"
    line = one_error_line(bench(*run_args(tmp_path, "--data", str(path))))
    assert "nowhere.npy" in line and "does not exist" in line


# --------------------------------------------------------------------------- run flags


def test_unknown_impl(tmp_path):
    line = one_error_line(bench("run", "--impl", "nosuchimpl", "--kmer", "3", "--no-progress",
                                "--results", str(tmp_path / "results")))
    assert "nosuchimpl" in line
    assert "torch" in line  # lists the built-in impls


@pytest.mark.parametrize("size", ["12XB", "lots", "1.5.MiB"])
def test_bad_inject_leak_size(tmp_path, size):
    line = one_error_line(bench(*run_args(tmp_path, "--inject-leak", size)))
    assert "--inject-leak" in line and repr(size) in line
    assert "1MiB" in line  # shows the form to use
