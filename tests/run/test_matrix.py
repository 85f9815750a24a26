"""The default matrix: what it plans for each device, and the main command end to end on a tiny k."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run.matrix import CPU_BUDGET_S, GPU_BATCHES, plan_default


def test_cpu_plan_at_k7_runs_what_a_cpu_can_and_lists_the_rest():
    plan = plan_default(7, "cpu", impls=["torch", "flax"])
    assert [s.name for s, _ in plan.specs] == ["dense", "conv-final", "masked-multiomics"]
    too_slow = {s.name: reason for s, reason in plan.too_slow}
    assert set(too_slow) == {"conv-revised", "conv-original", "conv-strided", "resvae", "autoencoder-kl"}
    assert all("parameters" in too_slow[name] for name in ("conv-revised", "conv-original"))
    assert all("GFLOP per sample" in too_slow[name] for name in ("conv-strided", "resvae", "autoencoder-kl"))
    assert plan.budget_s == CPU_BUDGET_S and plan.cell_count() == 2 * 4


def test_gpu_plan_gets_the_full_batch_range_and_no_budget():
    plan = plan_default(7, "gpu", impls=["torch"])
    assert all(b == GPU_BATCHES for _, b in plan.specs) and plan.budget_s is None


def test_presets_that_cannot_be_built_at_k_are_listed_with_the_reason():
    plan = plan_default(6, "cpu", impls=["torch"])
    invalid = dict(plan.invalid)
    assert "conv-final" in invalid and "2048 or 2112" in invalid["conv-final"]
    assert "dense" in [s.name for s, _ in plan.specs]


@pytest.mark.worker
def test_matrix_command_runs_skips_and_reports(tmp_path):
    impl = "tests/fixtures/planted.py:NumpyVAE"
    out = subprocess.run([sys.executable, "-m", "bench", "matrix", "--kmer", "3", "--impl", impl, "--cpu",
                          "--budget-minutes", "0.5", "--results", str(tmp_path / "res"), "--run-id", "m1",
                          "--out", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped preset conv-final" in out.stderr  # 32 features cannot pass conv-final's pools
    report = Path(out.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert (report / "report.md").exists() and (report / "report.html").exists()
    rows = [json.loads(line) for line in (tmp_path / "res" / "m1.jsonl").read_text().splitlines()]
    dense = [r for r in rows if r["spec_name"] == "dense"]
    assert {r["batch"] for r in dense} == {64, 512} and all(r["status"] == "ok" for r in dense)
    assert all(r["time_budget_s"] for r in dense)
    md = (report / "report.md").read_text()
    assert "## Recommendation" in md and "NumpyVAE" in md
