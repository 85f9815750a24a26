"""The leak verdict's clean-sample rules and the power every verdict states (issue 25), on seeded series
shaped like the leak phase's: a flat or leaking RssAnon with the allocator's spikes and dips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.diagnose.evidence import judge_steady, settle
from harness.diagnose.leak import detectable_leak, leak_verdict, power_line, steps_for

KIB, MIB = 1024, 2**20
T = 128 * KIB  # dense k=7 b=512's threshold
BASE = 700 * MIB


def series(n: int, slope: float, spikes: dict[int, float] | None = None, noise: float = 0.0, seed: int = 0) -> list[int]:
    """RssAnon of ``n`` synchronised steps: ``slope`` bytes a step, page noise, and single-sample spikes (a
    freed 100 MiB buffer the allocator still held at that sample) at the given indices."""
    rng = np.random.default_rng(seed)
    y = BASE + slope * np.arange(n) + rng.normal(0, noise, n)
    for i, size in (spikes or {}).items():
        y[i] += size
    return [int(v) for v in np.round(y / 4096) * 4096]


SPIKES = {7: 100 * MIB, 13: 102 * MIB, 14: 101 * MIB, 26: -35 * MIB, 31: 100 * MIB}


def test_a_leak_with_spikes_reads_leak_at_its_slope():
    v = leak_verdict(series(40, 256 * KIB, SPIKES), 0, T)
    assert v.verdict == "leak", v.reason
    assert v.slope_bytes_per_batch == pytest.approx(256 * KIB, rel=0.02)
    assert "spikes set to the median" in v.reason


def test_a_flat_series_with_spikes_reads_no_leak():
    v = leak_verdict(series(40, 0.0, SPIKES, noise=8 * KIB), 0, T)
    assert v.verdict == "no leak", v.reason
    assert v.bound_bytes_per_batch < T


def test_a_dip_and_its_recovery_is_not_a_jump():
    """Before, the largest increase (out of a 60 MiB dip lasting three samples) was set aside as an arena jump,
    lowering everything after it: a clean series read a steep negative slope."""
    y = series(40, 0.0)
    for i in (20, 21, 22):
        y[i] -= 60 * MIB
    v = leak_verdict(y, 0, T)
    assert v.jump_bytes == 0, v.reason
    assert abs(v.slope_bytes_per_batch) < T / 4
    assert v.verdict == "no leak", v.reason


def test_a_step_that_stays_up_is_still_set_aside():
    y = series(40, 0.0)
    y[18:] = [v + 32 * MIB for v in y[18:]]
    v = leak_verdict(y, 0, T)
    assert v.jump_bytes == pytest.approx(32 * MIB, rel=0.01)
    assert v.verdict == "no leak", v.reason


def test_every_verdict_states_its_power():
    noisy = leak_verdict(series(24, 0.0, noise=400 * KIB, seed=3), 0, T)
    quiet = leak_verdict(series(24, 0.0, noise=4 * KIB, seed=3), 0, T)
    for v in (noisy, quiet):
        se = (v.slope_ci_high - v.slope_ci_low) / (2 * 1.959964)
        assert v.detectable_bytes_per_batch == pytest.approx(T + 2.801585 * se)
        assert v.bound_bytes_per_batch == v.slope_ci_high
        assert v.to_dict()["judged_steps"] == 24
    assert quiet.detectable_bytes_per_batch < noisy.detectable_bytes_per_batch
    short = leak_verdict(series(5, 0.0), 0, T)
    assert math.isnan(short.detectable_bytes_per_batch) and short.verdict == "inconclusive"
    nine = leak_verdict(series(9, 0.0, noise=4 * KIB), 0, T)  # too short for a verdict, not for a bound
    assert nine.verdict == "inconclusive" and nine.detectable_bytes_per_batch > T


def test_the_detectable_leak_falls_with_length_as_steps_for_predicts():
    """SE falls as n^-3/2 for independent noise: the length steps_for asks for reaches its target."""
    noise = 2 * MIB
    first = leak_verdict(series(24, 0.0, noise=noise, seed=5), 0, T)
    need = steps_for(1.5 * T, T, first.detectable_bytes_per_batch, 24)
    assert need is not None and need > 24
    longer = [leak_verdict(series(need, 0.0, noise=noise, seed=s), 0, T).detectable_bytes_per_batch for s in range(5)]
    assert np.median(longer) <= 1.5 * T * 1.15
    assert steps_for(T, T, 2 * T, 24) is None  # a target at the threshold cannot be reached
    assert steps_for(2 * T, T, 1.2 * T, 24) == 24
    assert math.isnan(detectable_leak(T, math.nan, 1.0))  # no CI, no power


def test_power_lines_say_what_the_series_could_see():
    flat = judge_steady(series(30, 0.0, noise=4 * KIB), None, {}, {}, T)
    assert flat["verdict"] == "no leak"
    assert power_line(flat).startswith("no leak above ")
    unclear = judge_steady(series(22, 100 * KIB, noise=2 * MIB, seed=2), None, {}, {}, T)
    assert unclear["verdict"] == "inconclusive", unclear["reason"]
    assert power_line(unclear).startswith("could not rule out ") and power_line(unclear).endswith("in 22 steps")
    assert power_line({"verdict": "no leak"}) == ""  # a row from before the bounds were stored
    leak = judge_steady(series(30, MIB), None, {}, {}, T)
    assert leak["verdict"] == "leak" and power_line(leak).startswith("at least ")


def test_a_confirmation_states_the_power_of_its_own_longer_series():
    steady = judge_steady(series(40, 300 * KIB, SPIKES), None, {}, {}, T)
    assert steady["verdict"] == "leak"
    confirmation = {"signals": ["rss"], "steps": 150, "reason": "r.", "verdict": "leak",
                    "rss": {**leak_verdict(series(150, 300 * KIB), 30, T).to_dict()}}
    out = settle(steady, confirmation)
    assert out["judged_steps"] == 120 and out["decided_by"] == "confirmation"
    assert out["detectable_bytes_per_batch"] == confirmation["rss"]["detectable_bytes_per_batch"]


def test_a_buffer_held_every_other_step_is_no_leak_and_a_leak_under_it_is_one():
    """keras-torch at dense k=7 b=512, after a heap trim: its samples alternate by 17.6 MiB, step after step. The
    leak phase judges the floor over two steps; the staircase a leak makes of it (0, then twice the leak) has no
    jump in it."""
    alternate = [17.6 * MIB * (i % 2) for i in range(16)]
    clean = [v + a for v, a in zip(series(16, 0.0), alternate, strict=True)]
    leaking = [v + a for v, a in zip(series(16, 256 * KIB), alternate, strict=True)]
    raw = leak_verdict(clean, 2, T, min_window=6)
    assert raw.bound_bytes_per_batch > 4 * T  # read raw, the alternation swamps the threshold
    v = leak_verdict(clean, 2, T, min_window=6, floor_window=2)
    assert v.verdict == "no leak" and v.bound_bytes_per_batch < T, v.reason
    v = leak_verdict(leaking, 2, T, min_window=6, floor_window=2)
    assert v.verdict == "leak" and v.jump_bytes == 0, v.reason
    assert v.slope_bytes_per_batch == pytest.approx(256 * KIB, rel=0.05)


def test_spikes_next_to_the_warm_up_are_floored_with_their_predecessor():
    """keras-jax with 256 KiB injected: a 96 MiB and a 16 MiB sample right after the phase's warm-up. Judged
    with the warm-up still in the floor's reach, they are spikes; sliced off first, three outliers in five
    samples dragged a good sample up to theirs and the slope's CI reached -1 MiB/batch."""
    y = series(16, 256 * KIB)
    y[2] += 96 * MIB
    y[3] += 16 * MIB
    y[6] += 88 * MIB
    y[14] += 22 * MIB
    y[15] += 69 * MIB
    v = leak_verdict(y, 2, T, min_window=6, floor_window=2)
    assert v.verdict == "leak", v.reason
    # a spike set to a median of trending neighbours lags the trend a little: the slope reads low, not wrong
    assert 0.8 * 256 * KIB <= v.slope_bytes_per_batch <= 1.02 * 256 * KIB
    sliced = leak_verdict(y[2:], 0, T, min_window=6, floor_window=2)  # the old order: warm-up cut, then floor
    assert sliced.slope_ci_low < v.slope_ci_low


def test_a_level_the_allocator_switches_to_is_not_a_trend():
    """keras-tensorflow conv-final k=7 b=32 in a fresh CPU main command (8e1ed48), its leak phase in MiB: two levels
    7.5 MiB apart, more high samples late. Against an 8 KiB threshold it read "leak" (97 KiB/batch, CI low 24.9 KiB),
    which its confirmation did not confirm: a warning on a clean cell. Growth within 3 SDs of the noise about the
    line is no trend: "inconclusive". The same rule keeps a real leak (256 KiB a step) on the same levels."""
    mib = [1041.3, 1041.07, 1033.58, 1033.8, 1041.3, 1041.08, 1041.32, 1041.55, 1033.8, 1034.05, 1041.07, 1041.43,
           1041.45, 1041.44]
    y = [int(v * MIB) for v in mib]
    v = leak_verdict(y, 2, 8 * KIB, min_window=6, floor_window=2)
    assert v.verdict == "inconclusive" and "noise about the line" in v.reason, v.reason
    leaking = [value + i * 256 * KIB for i, value in enumerate(series(14, 0.0))]
    assert leak_verdict(leaking, 2, 8 * KIB, min_window=6, floor_window=2).verdict == "leak"
