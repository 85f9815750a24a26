"""Time to target: the target, the steps to it, the separable time, and who gets the reference's steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures.rows import ok_row

from harness.diagnose.target import Target, reference_target, steps_to_target, time_to_target, user_target
from harness.run.curve_data import CurveBatches, curve_data, held_out_rows, synthetic_train_rows
from harness.spec.presets import preset
from reports.cells import group_cells
from reports.time_to_target import spec_targets, target_sentence

STEPS = [0, 10, 20, 30, 40, 50, 60]
RECON = [100.0, 90.0, 85.0, 82.0, 81.0, 80.5, 80.0]


def test_the_target_closes_90_percent_of_the_way_from_the_start_to_where_the_curve_ends():
    t = reference_target(STEPS, RECON, 60, 32, "torch")
    end = np.mean([80.5, 80.0])  # probes over the last 20% of 60 steps (from step 48)
    assert t.recon == pytest.approx(end + 0.1 * (100.0 - end))
    assert (t.start, t.batch, t.steps, t.impl) == (100.0, 32, 60, "torch")
    assert "90% of the way from 100 at initialisation" in t.describe()
    assert Target.from_dict(t.to_dict()) == t


def test_steps_to_target_is_the_first_probe_that_meets_it_and_not_reached_is_an_answer():
    got = steps_to_target(STEPS, RECON, 82.0, 64, 60)
    assert (got.steps, got.samples, got.reached) == (30, 30 * 64, True)
    missed = steps_to_target(STEPS, RECON, 70.0, 64, 60)
    assert not missed.reached and missed.samples is None and missed.describe() == "not reached within 60 steps"
    assert steps_to_target([0, 10], [math.nan, 1.0], 5.0, 8, 10).steps == 10  # a NaN probe never meets it


def test_time_to_target_counts_the_first_step_as_the_compile_and_carries_the_mean_steps_ci():
    t = time_to_target(31, compile_s=2.0, mean_s=0.01, ci_low_s=0.009, ci_high_s=0.012)
    assert t.seconds == pytest.approx(2.0 + 30 * 0.01)
    assert (t.ci_low, t.ci_high) == (pytest.approx(2.27), pytest.approx(2.36))
    assert t.overlaps(2.35, 3.0) and not t.overlaps(2.37, 3.0)
    assert time_to_target(0, 2.0, 0.01).seconds == 0.0
    assert not time_to_target(5, 2.0, 0.01).has_ci
    with pytest.raises(ValueError, match="positive"):
        user_target(-1.0)


def _record(impl: str, batch: int, steps: int | None, passed: bool = True, parted_at: int | None = None,
            target: Target | None = None) -> dict:
    target = target or Target(85.0, "reference", impl="torch", batch=32, steps=60, start=100.0, end=83.0)
    return {"spec_name": "dense", "kmer": 5, "batch": batch, "precision": "fp32", "steps": 60,
            "curve": {"impl": impl}, "target": target.to_dict(),
            "verdict": {"impl": impl, "reference": "torch", "passed": passed, "parted_at": parted_at},
            "steps_to_target": {"steps": steps, "samples": None if steps is None else steps * batch,
                                "budget_steps": 60}}


def _cells(*impls: str) -> dict:
    rows = [ok_row(i, b, ms, 0.1) for i in impls for b, ms in ((32, 10.0), (128, 20.0))]
    [(key, by_batch)] = group_cells(rows).items()
    return by_batch


def test_an_impl_that_agrees_gets_the_references_steps_and_one_that_parted_its_own_or_none():
    by_batch = _cells("torch", "flax", "planted")
    curves = [_record("torch", 32, 20), _record("torch", 128, 15), _record("flax", 32, 20),
              _record("planted", 32, 40, passed=False, parted_at=12)]
    st = spec_targets("dense", 5, by_batch, curves)
    cells = {(c.label, c.batch): c for c in st.cells}
    assert st.steps[32].steps == 20 and st.steps[128].steps == 15
    assert cells[("flax", 128)].basis == "agrees" and cells[("flax", 128)].steps.steps == 15
    assert "agrees with torch's at batch 32" in cells[("flax", 128)].note
    own = cells[("planted", 32)]
    assert own.basis == "own curve" and own.steps.steps == 40 and "trains differently" in own.note
    assert own.time.seconds == pytest.approx(1.5 + 39 * 0.010)
    none = cells[("planted", 128)]
    assert none.time is None and "no curve of its own at batch 128" in none.note
    assert cells[("torch", 32)].time.seconds == pytest.approx(1.5 + 19 * 0.010)


def test_the_sentence_names_the_fastest_pair_and_what_the_larger_batch_costs_in_samples():
    by_batch = _cells("torch")
    st = spec_targets("dense", 5, by_batch, [_record("torch", 32, 20), _record("torch", 128, 15)])
    text = target_sentence(st, ("torch", 128, 128 / 0.020))
    assert "**torch at batch 32**" in text and "(1.69 s, 95% CI 1.69-1.69: 20 steps" in text
    assert "batch 128 gives 2.00× the samples/s but needs 3.00× the samples" in text
    assert "the same pair" in target_sentence(st, ("torch", 32, 3200.0))
    missed = spec_targets("dense", 5, by_batch, [_record("torch", 32, 20), _record("torch", 128, None)])
    assert "did not reach the target within 60 steps" in target_sentence(missed, ("torch", 128, 6400.0))
    assert spec_targets("conv", 5, by_batch, [_record("torch", 32, 20)]) is None


def test_a_curve_sees_each_training_row_once_and_every_batch_reads_the_same_rows(tmp_path):
    spec = preset("dense", 32)
    rows = synthetic_train_rows(steps=20, batch=16)
    assert rows == 320
    data, held, scale = curve_data(spec, 3, rows, 0, tmp_path)
    assert data.epochs(20, 16) == 1.0 and data.epochs(10, 16) == 0.5 and held.shape == (256, 32)
    small = CurveBatches(data.path, None, data.train_rows, 16, **scale)
    big = CurveBatches(data.path, None, data.train_rows, 32, **scale)
    seen = np.concatenate([small[i] for i in range(20)])
    assert len(np.unique(seen, axis=0)) == 320  # no row twice
    np.testing.assert_array_equal(big[0], np.concatenate([small[0], small[1]]))
    assert seen.min() >= 0 and seen.max() <= 1 and seen.max() == 1.0 and held.min() >= 0


def test_a_data_file_is_used_as_it_is_with_its_last_rows_held_out(tmp_path):
    spec = preset("dense", 32)
    rows = np.random.default_rng(0).uniform(0, 0.01, (100, 32)).astype(np.float32)
    np.save(tmp_path / "d.npy", rows)
    data, held, scale = curve_data(spec, 3, 0, 0, tmp_path, data=str(tmp_path / "d.npy"))
    assert held_out_rows(100) == 20 and data.train_rows == 80 and not scale
    np.testing.assert_array_equal(held, rows[80:])
    np.testing.assert_array_equal(CurveBatches(data.path, None, data.train_rows, 16)[1], rows[16:32])
    assert data.to_record(20, 16)["epochs"] == 4.0  # 320 rows seen from 80: stated, not hidden


def test_a_reference_curve_that_does_not_fall_gives_no_target_and_the_report_says_why():
    with pytest.raises(ValueError, match="did not fall .* pass --target-recon"):
        reference_target(STEPS, list(reversed(RECON)), 60, 32, "torch")
    from bench.curves import TargetReader
    from harness.run.curves import Curve
    from reports.time_to_target import no_target_line

    reader = TargetReader("torch")
    flat = Curve("torch", probe_steps=STEPS, recon=[100.0] * len(STEPS))
    assert reader.see([flat], 60, 32) is None and "did not fall" in reader.why_none
    line = no_target_line("dense", 5, [{"spec_name": "dense", "kmer": 5, "why_no_target": reader.why_none}])
    assert line.startswith("No time to target: torch's held-out reconstruction at batch 32 did not fall")


def test_target_check_agrees_when_the_two_cis_overlap_and_says_no_when_they_do_not():
    from bench.target_check import _compare
    from harness.diagnose.target import StepsToTarget
    from harness.measure.stats import mean_ci95 as mean_ci
    from harness.run.to_target import DirectRun
    from reports.time_to_target import TargetCell

    def cell(seconds: float) -> TargetCell:
        steps = StepsToTarget(31, 64, 60)
        return TargetCell("torch", 64, steps, "reference", time=time_to_target(31, seconds - 0.3, 0.01))

    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2.0 - 4.303 / math.sqrt(3), rel=1e-3) and math.isnan(mean_ci([1.0])[1])
    runs = [DirectRun("torch", 64, 31, s, 0.02) for s in (2.0, 2.1, 2.05)]
    near = _compare("torch", 64, [cell(s) for s in (2.02, 2.06, 2.1)], runs)
    far = _compare("torch", 64, [cell(s) for s in (3.0, 3.02, 3.04)], runs)
    assert near["agree"] and not far["agree"] and far["ratio"] == pytest.approx(2.05 / 3.02, rel=1e-6)
    failed = _compare("torch", 64, [cell(2.05)] * 3, runs[:2] + [DirectRun("torch", 64, None, None, None, "boom")])
    assert not failed["agree"] and failed["errors"] == ["boom"]
