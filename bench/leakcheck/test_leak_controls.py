"""Injected leaks are found, and clean cells stay clean, on the real builds at the main command's budget.

``nox -s leakcheck`` (not the default suite: 8 cells of dense k=7 b=512, some 5 minutes on 2 cores). Each
cell is ``python -m bench run`` with ``--cell-budget 21``, the share of the CPU main command's 7-minute
budget each of its 20 running cells gets, so the leak phase and the confirmation are sized as they are
there. With ``--inject-leak 256KiB`` (twice the cell's 128 KiB threshold) every build must read
"leak (confirmed)" with its slope near 256 KiB a batch; without it, no build may read a leak, confirmed or
not. The rows are kept under ``reports/out/leakcheck/<session's start>/`` for the figures a note quotes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: each session's rows in a folder of their own, so that a second session never meets the first one's run ids
OUT = REPO / "reports" / "out" / "leakcheck" / time.strftime("%Y%m%d-%H%M%S")
IMPLS = ["torch", "flax", "keras-jax", "keras-torch"]
KIB = 1024
CELL_BUDGET_S = 21


def run_cell(impl: str, leak: str | None) -> dict:
    run_id = f"{impl}-{leak or 'clean'}"
    args = [sys.executable, "-m", "bench", "run", "--impl", impl, "--spec", "dense", "--kmer", "7", "--batch", "512",
            "--cell-budget", str(CELL_BUDGET_S), "--no-progress", "--results", str(OUT), "--run-id", run_id]
    if leak:
        args += ["--inject-leak", leak]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (OUT / f"{run_id}.jsonl").read_text().splitlines() if line.strip()][-1:]
    assert row["status"] == "ok", row.get("failure_message")
    return row


@pytest.mark.parametrize("impl", IMPLS)
def test_an_injected_leak_is_confirmed(impl):
    leak = run_cell(impl, "256KiB")["leak"]
    assert leak["label"] == "leak (confirmed)", leak["reason"]
    # the confirmation's series, the longer one that decided, carries the slope
    slope = leak["confirmation"]["rss"]["slope_bytes_per_batch"]
    assert slope == pytest.approx(256 * KIB, rel=0.1), leak["reason"]
    assert leak["detectable_bytes_per_batch"] < 256 * KIB  # the series could see a leak of this size


@pytest.mark.parametrize("impl", IMPLS)
def test_a_clean_cell_reads_no_leak(impl):
    leak = run_cell(impl, None)["leak"]
    assert leak["verdict"] != "leak", leak["reason"]
    assert leak["detectable_bytes_per_batch"] > 0 and leak["judged_steps"] > 0
