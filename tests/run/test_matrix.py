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


@pytest.mark.worker
def test_a_bf16_matrix_trains_bf16_curves_beside_its_rows_and_the_answer_weighs_them(tmp_path):
    """``matrix --precision bf16`` keeps fp32, adds bf16 cells and bf16 curves against fp32 torch: the answer can then
    say whether bf16 trains as fp32 does, never recommend it without a curve. The matrix's curves run at each of
    dense's batches (issue 23): every impl at the smallest, the reference alone at the next until the target, so
    the first screen says which pair is fastest to the target beside the most samples/s."""
    out = subprocess.run([sys.executable, "-m", "bench", "matrix", "--kmer", "3", "--impl", "torch", "--spec", "dense",
                          "--batch", "16,32", "--cpu", "--precision", "bf16", "--steps", "6", "--curves-steps", "20",
                          "--results", str(tmp_path / "res"), "--run-id", "p1", "--out", str(tmp_path / "out"),
                          "--no-progress", "--confirm", "off"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "res" / "p1.jsonl").read_text().splitlines()]
    assert sorted(r["precision"] for r in rows) == ["bf16", "bf16", "fp32", "fp32"]
    assert all(r["status"] == "ok" for r in rows)
    curves = [json.loads(line) for line in (tmp_path / "res" / "curves" / "p1.jsonl").read_text().splitlines()]
    assert {(c["curve"]["impl"], c["precision"], c["batch"]) for c in curves} == {
        ("torch", "fp32", 16), ("torch (1 ulp)", "fp32", 16), ("torch bf16", "bf16", 16), ("torch", "fp32", 32)}
    assert all(c["target"] == curves[0]["target"] and c["training_rows"]["epochs"] <= 1 for c in curves)
    report = Path(out.stdout.strip().splitlines()[-1].removeprefix("report: "))
    md = (report / "report.md").read_text()
    answer = md.split("\n\n")[2]
    assert "in bf16" in answer and "no bf16 training curve" not in answer, answer
    assert "Fastest to the target" in md.split("\n## ")[0] and "## Time to target" in md, md[:3000]
