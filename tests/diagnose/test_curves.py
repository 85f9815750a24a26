"""Training curves: the verdict rules on hand-made curves, the stored records, and real workers at small k
(the same curves across builds, a planted beta2 caught, KL collapse flagged at beta 50 and not at 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from fixtures.paths import REPO

from harness.diagnose.curves import KL_COLLAPSE_NATS, TOL_PART, judge, kl_collapsed, smooth
from harness.run.curves import Curve, CurveRun, step_noise, train_curves
from harness.spec.presets import preset
from harness.spec.schema import Loss
from harness.store import append_curves, load_curves

PLANTED = str(REPO / "tests/fixtures/planted_curves.py") + ":Beta2TorchVAE"
#: its row label: the name its class sets
PLANTED_LABEL = "torch-beta2-0.99"


def _curve(impl: str, loss: list[float], recon: list[float] | None = None, kl_max: list[float] | None = None,
           every: int = 10) -> Curve:
    probes = list(range(0, len(loss) + 1, every))
    recon = recon or [100.0 - i for i in range(len(probes))]
    kl_max = kl_max or [0.5] * len(probes)
    return Curve(impl, loss=loss, probe_steps=probes, recon=recon, kl=[k * 10 for k in kl_max], kl_max_dim=kl_max,
                 grad_norm=[1.0] * len(probes))


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])


def test_curves_that_part_are_caught_at_the_step_they_part():
    # no floor run: the fixed tolerances
    ref = _curve("torch", [100.0] * 100)
    same = _curve("flax", [100.0 * (1 + 1e-4)] * 100)
    drift = _curve("planted", [100.0] * 50 + [100.0 * (1 + 3 * TOL_PART)] * 50)
    bad = _curve("nan", [100.0] * 40 + [float("nan")] * 60)
    v = {x.impl: x for x in judge([ref, same, drift, bad])}
    assert v["torch"].passed and v["flax"].passed and v["flax"].parted_at is None
    assert not v["planted"].passed and 50 <= v["planted"].parted_at < 50 + 10  # smoothing lags by under a window
    assert not v["nan"].passed and v["nan"].nonfinite_at == 40
    failed = replace(same, error="Worker died: SIGKILL")
    assert judge([ref, failed])[1].error == "Worker died: SIGKILL" and not judge([ref, failed])[1].passed


def test_a_bf16_curve_is_judged_by_where_it_ends_and_its_parting_step_stands_beside_it():
    """bf16 leaves float32's path within steps; it trains as fp32 does when its end is within TOL_FINAL_PRECISION,
    and a KL that collapses in bf16 only is a difference."""
    from harness.diagnose.curves import TOL_FINAL_PRECISION

    ref = _curve("torch", [100.0] * 100)
    near = replace(_curve("flax bf16", [100.0] * 20 + [100.5] * 80), precision="bf16")  # parts, ends 0.5% away
    n = len(near.recon)
    near.recon = [r * (1 + TOL_FINAL_PRECISION / 2) for r in near.recon]
    far = replace(near, impl="keras bf16", recon=[r * (1 + 3 * TOL_FINAL_PRECISION) for r in ref.recon])
    collapsed = replace(near, impl="jax bf16", kl_max_dim=[0.5] * (n // 2) + [0.001] * (n - n // 2))
    v = {x.impl: x for x in judge([ref, near, far, collapsed], reference="torch")}
    assert v["flax bf16"].passed and v["flax bf16"].parted_at is not None and v["flax bf16"].parted_at < 30
    assert v["flax bf16"].tol_final == TOL_FINAL_PRECISION and v["flax bf16"].against_another_precision
    assert not v["keras bf16"].passed
    assert v["jax bf16"].kl_collapse and not v["jax bf16"].kl_collapse_reference and not v["jax bf16"].passed
    # the same parting in float32 is a difference: there the floor decides
    assert not judge([ref, replace(near, precision="fp32")], reference="torch")[1].passed


def test_the_noise_floor_sets_the_tolerances():
    ref = _curve("torch", [100.0] * 100)
    floor = _curve("torch (1 ulp)", [100.0] * 50 + [100.1] * 50)  # a 0.1% gap at the end
    near = _curve("flax", [100.0] * 50 + [100.3] * 50)  # 3 x the floor: the same training
    far = _curve("planted", [100.0] * 50 + [100.7] * 50)  # 7 x the floor: parted
    v = {x.impl: x for x in judge([ref, floor, near, far], reference="torch", floor="torch (1 ulp)")}
    assert v["flax"].tol_source == "floor" and v["flax"].tol_part == pytest.approx(0.005, rel=1e-3)
    assert v["flax"].passed and v["torch (1 ulp)"].passed and not v["planted"].passed
    assert judge([ref, near])[1].tol_source == "fixed" and not judge([ref, near])[1].passed  # 0.3% > 0.2%


def test_final_recon_compares_the_end_of_the_held_out_curve():
    ref = _curve("torch", [10.0] * 100, recon=[50.0] * 11)
    off = _curve("flax", [10.0] * 100, recon=[50.0] * 8 + [60.0] * 3)  # probes 80, 90, 100 are the last 20%
    v = judge([ref, off])[1]
    assert v.final_recon == pytest.approx(0.2) and not v.passed


def test_the_final_tolerance_covers_the_spread_a_noisy_end_shows_by_chance():
    """A floor whose final mean happens to match torch's, while its probes at the end swing 1% either way: one
    floor draw would set 0.1%, and an impl ending 0.5% away on the same noise would read "differs"."""
    ref = _curve("torch", [10.0] * 100, recon=[50.0] * 11)
    floor = _curve("torch (1 ulp)", [10.0] * 100, recon=[50.0] * 8 + [50.5, 49.5, 50.0])  # gaps 1%, 1%, 0
    near = _curve("flax", [10.0] * 100, recon=[50.0] * 8 + [50.25] * 3)  # ends 0.5% away
    far = _curve("planted", [10.0] * 100, recon=[50.0] * 8 + [52.0] * 3)  # ends 4% away
    v = {x.impl: x for x in judge([ref, floor, near, far], reference="torch", floor="torch (1 ulp)")}
    assert v["flax"].tol_final == pytest.approx(5 * (2 * 0.01**2 / 3) ** 0.5 / 3**0.5)  # 5 x 0.47%
    assert v["flax"].passed and not v["planted"].passed


def test_kl_collapse_needs_every_late_element_under_the_threshold_and_a_falling_reconstruction():
    low = [1.0] * 5 + [KL_COLLAPSE_NATS / 10] * 6  # probes 0..100; the second half (50..100) is low
    assert kl_collapsed(_curve("a", [1.0] * 100, kl_max=low), 100)[1]
    late_spike = low[:-1] + [KL_COLLAPSE_NATS * 2]
    assert not kl_collapsed(_curve("a", [1.0] * 100, kl_max=late_spike), 100)[1]
    settling = [1.0] * 5 + [KL_COLLAPSE_NATS * 2] + [KL_COLLAPSE_NATS / 10] * 5  # still above at step 50
    assert not kl_collapsed(_curve("a", [1.0] * 100, kl_max=settling), 100)[1]
    flat_recon = [50.0] * 11
    assert not kl_collapsed(_curve("a", [1.0] * 100, recon=flat_recon, kl_max=low), 100)[1]


def test_every_worker_gets_the_same_noise_and_masks():
    spec = preset("masked-multiomics", 1)
    a, fa = step_noise(spec, 0, 7, 4)
    b, fb = step_noise(spec, 0, 7, 4)
    assert np.array_equal(a, b) and fa == fb and a.shape == (4, 50)
    assert not np.array_equal(a, step_noise(spec, 0, 8, 4)[0])
    draws = {step_noise(spec, 0, i, 1)[1]["mask_block"] for i in range(40)}
    assert draws == {0, 1, 2, 3}


def test_records_are_stored_beside_the_run_and_the_latest_per_impl_is_read(tmp_path):
    rec = {"spec_name": "dense", "spec_hash": "h", "batch": 8, "curve": {"impl": "torch", "loss": [1.0]}}
    append_curves(tmp_path, "20261126-000000-aaaaaa", [rec, {**rec, "curve": {"impl": "flax", "loss": [2.0]}}])
    append_curves(tmp_path, "20261126-000000-aaaaaa", [{**rec, "curve": {"impl": "torch", "loss": [3.0]}}])
    (tmp_path / "20261126-000000-aaaaaa.jsonl").write_text("")
    got = load_curves([tmp_path / "20261126-000000-aaaaaa.jsonl"])
    assert sorted((c["curve"]["impl"], c["curve"]["loss"][0]) for c in got) == [("flax", 2.0), ("torch", 3.0)]
    assert len(load_curves([tmp_path])) == 2 and load_curves([tmp_path / "nothing.jsonl"]) == []


class Killed(Exception):
    """The parent's end, as a Ctrl-C or an OOM kill would bring it."""


def _trains_then_dies(after: int):
    """A stand-in for ``train_curves`` that hands over ``after`` curves as their workers would, then is
    killed (a Ctrl-C, an OOM kill of the parent) before the rest are trained."""
    def fake(spec, k, runs, steps, batch, every, data=None, columns=None, timeout_s=0, on_curve=None, **_):
        for n, run in enumerate(runs[:after]):
            on_curve(_curve(run.label, [10.0 + 0.01 * n] * 20))
        raise Killed
    return fake


def test_each_curve_is_stored_as_soon_as_it_can_be_judged(tmp_path, monkeypatch):
    """The reference and its 1-ulp run are stored together once both are trained, then every impl as it ends:
    an interrupted run keeps what it trained (issue 27: every curve was held until the last impl finished)."""
    import harness.run.curves
    from bench.curves import CurveWriter, curve_records, run_curves

    spec, run_id = preset("dense", 32), "20261207-000000-aaaaaa"
    writer = CurveWriter(str(tmp_path), run_id, lambda c, v: curve_records(spec, 3, 8, 20, 10, c, v, None))
    monkeypatch.setattr(harness.run.curves, "train_curves", _trains_then_dies(after=3))
    with pytest.raises(Killed):
        run_curves(spec, 3, ["torch", "flax", "keras-jax"], 20, 8, 10, on_judged=writer)
    stored = {r["curve"]["impl"]: r["verdict"] for r in load_curves([tmp_path])}
    assert sorted(stored) == ["flax", "torch", "torch (1 ulp)"]
    assert stored["flax"]["reference"] == "torch" and stored["flax"]["tol_source"] == "floor"

    monkeypatch.setattr(harness.run.curves, "train_curves", _trains_then_dies(after=1))
    writer.records.clear()
    with pytest.raises(Killed):  # the reference alone cannot be judged against its floor yet
        run_curves(spec, 3, ["torch", "flax"], 20, 8, 10, on_judged=writer)
    assert writer.records == []


def test_a_curve_that_cannot_be_stored_is_printed_and_said(tmp_path, capsys):
    """A full disk or a file in the way: the record goes to stderr as one JSON line, the writer says why,
    and the next impl's record is still tried."""
    from bench.curves import CurveWriter, curve_records

    spec = preset("dense", 32)
    (tmp_path / "curves").write_text("a file where the curves dir goes")
    writer = CurveWriter(str(tmp_path), "20261207-000000-aaaaaa",
                         lambda c, v: curve_records(spec, 3, 8, 20, 10, c, v, None))
    curves = [_curve("torch", [10.0] * 20), _curve("torch (1 ulp)", [10.0] * 20), _curve("flax", [10.0] * 20)]
    verdicts = judge(curves, reference="torch", floor="torch (1 ulp)")
    writer(curves[:2], verdicts[:2])
    writer(curves[2:], verdicts[2:])  # the next impl is still tried, and printed too
    printed = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["curve"]["impl"] for r in printed] == ["torch", "torch (1 ulp)", "flax"]
    assert writer.failed and "curves" in writer.failed and "\n" not in writer.stop_line()


# ------------------------------------------------------------------------- real workers


@pytest.mark.worker
@pytest.mark.slow
def test_kl_collapses_at_beta_50_and_not_at_beta_1():
    dense = preset("dense", 136)
    heavy = replace(dense, name="dense-beta50", loss=Loss(beta=50.0))
    [light_curve] = train_curves(dense, 4, [CurveRun("torch", "torch")], steps=200, batch=32, every=10)
    [heavy_curve] = train_curves(heavy, 4, [CurveRun("torch", "torch")], steps=200, batch=32, every=10)
    assert not judge([light_curve])[0].kl_collapse, light_curve.kl_max_dim
    assert judge([heavy_curve])[0].kl_collapse, heavy_curve.kl_max_dim


@pytest.mark.worker
@pytest.mark.slow
def test_the_builds_train_the_same_a_planted_beta2_parts_and_the_verb_stores_it(tmp_path):
    """One ``bench curves`` call: the four builds pass against PyTorch within the noise floor (PyTorch nudged
    by one ulp), and the planted beta2 (``tests/fixtures/planted_curves.py``), which one-step parity passes,
    parts from PyTorch's curve (at step 16 of 60 when measured), so the verb exits 1. One call, not two: each
    worker's framework import is most of its cost (the planted run had its own torch and nudged-torch workers)."""
    impls = f"torch,flax,keras-jax,keras-torch,{PLANTED}"
    done = subprocess.run([sys.executable, "-m", "bench", "curves", "--spec", "dense", "--kmer", "4", "--impl", impls,
                           "--steps", "60", "--batch", "32", "--every", "10", "--results", str(tmp_path),
                           "--run-id", "20261126-000000-cccccc", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    records = json.loads(done.stdout)
    verdicts = {r["verdict"]["impl"]: r["verdict"] for r in records}
    assert done.returncode == 1, (done.returncode, verdicts)
    planted = verdicts.pop(PLANTED_LABEL)
    assert set(verdicts) == {"torch", "torch (1 ulp)", "flax", "keras-jax", "keras-torch"}
    assert all(v["passed"] and not v["kl_collapse"] and v["tol_source"] == "floor" for v in verdicts.values()), verdicts
    assert not planted["passed"] and planted["parted_at"] is not None and planted["tol_source"] == "floor", planted
    assert len(load_curves([tmp_path])) == 6
    # time to target: the planted build trains differently, so its steps come from its own curve, not torch's
    from fixtures.rows import ok_row

    from reports.cells import group_cells
    from reports.time_to_target import spec_targets

    own = next(r["steps_to_target"] for r in records if r["verdict"]["impl"] == PLANTED_LABEL)
    assert all(r["target"] == records[0]["target"] and r["training_rows"]["epochs"] <= 1 for r in records)
    [(_, by_batch)] = group_cells([{**ok_row(i, 32, 5.0, 0.1), "kmer": 4} for i in ("torch", PLANTED_LABEL)]).items()
    cells = {c.label: c for c in spec_targets("dense", 4, by_batch, records).cells}
    assert cells[PLANTED_LABEL].basis == "own curve" and "trains differently" in cells[PLANTED_LABEL].note
    assert cells[PLANTED_LABEL].steps.steps == own["steps"] and own["steps"] is not None
    assert cells["torch"].basis == "reference"


@pytest.mark.worker
def test_bench_report_finds_the_curves_stored_beside_the_rows(tmp_path):
    from fixtures.rows import ok_row, write_jsonl

    row = ok_row("torch", 64, 40, 0.5)
    rows = write_jsonl(tmp_path / "run.jsonl", [row])
    curve = _curve("torch", [10.0] * 20)
    record = {"spec_name": "dense", "spec_hash": "hdense", "kmer": 5, "batch": 64, "steps": 20,
              "curve": curve.to_dict(), "verdict": judge([curve])[0].to_dict(), "tolerances": {}}
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "run.jsonl").write_text(json.dumps({**record, "run_id": row["run_id"]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "bench", "report", str(rows), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    md = next((tmp_path / "out").glob("*/report.md")).read_text()
    assert "## Training curves" in md and "### Curves: dense, k=5, batch 64, 20 steps" in md
