"""Tests for harness.measure.stats and harness.diagnose.leak on synthetic, seeded series."""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
from fixtures.paths import REPO

from harness.diagnose.leak import attribute_growth, format_bytes, leak_verdict
from harness.measure.stats import detect_warmup, mann_whitney_slower, summarize_steps

KIB = 1024
MIB = 1024 * 1024
BASE = 800 * MIB


def rss_series(increments: np.ndarray, noise_bytes: float, seed: int) -> list[int]:
    """Cumulative growth + Gaussian noise, quantised to 4 KiB pages like /proc's kB values."""
    rng = np.random.default_rng(seed)
    y = BASE + np.cumsum(increments) + rng.normal(0, noise_bytes, increments.size)
    return [int(v) for v in (np.round(y / 4096) * 4096)]


# --------------------------------------------------------------------------- leak verdict


def test_linear_leak_1mib_per_batch():
    v = leak_verdict(rss_series(np.full(200, MIB, dtype=float), 256 * KIB, seed=1), warmup_steps=5)
    assert v.verdict == "leak", v.reason
    assert abs(v.slope_bytes_per_batch - MIB) / MIB < 0.02
    assert v.slope_ci_low <= MIB <= v.slope_ci_high
    assert v.window == (5, 200)
    assert v.jump_bytes == 0


def test_linear_leak_64kib_per_batch():
    v = leak_verdict(rss_series(np.full(200, 64 * KIB, dtype=float), 64 * KIB, seed=2), warmup_steps=5)
    assert v.verdict == "leak", v.reason
    assert abs(v.slope_bytes_per_batch - 64 * KIB) / (64 * KIB) < 0.05


def test_flat_with_noise_is_no_leak():
    v = leak_verdict(rss_series(np.zeros(200), 128 * KIB, seed=3), warmup_steps=5)
    assert v.verdict == "no leak", v.reason
    assert abs(v.slope_bytes_per_batch) < 8 * KIB


def test_growth_then_plateau_is_no_leak():
    inc = np.zeros(200)
    inc[:30] = 50 * MIB / 30
    v = leak_verdict(rss_series(inc, 64 * KIB, seed=4), warmup_steps=1)
    assert v.verdict == "no leak", v.reason
    assert v.growth_bytes > 40 * MIB  # the early growth is reported, just not called a leak


def test_single_jump_is_not_a_leak():
    inc = np.zeros(200)
    inc[100] = 8 * MIB
    v = leak_verdict(rss_series(inc, 64 * KIB, seed=5), warmup_steps=5)
    assert v.verdict != "leak", v.reason
    assert v.verdict == "no leak"
    assert v.jump_step == 100 and abs(v.jump_bytes - 8 * MIB) < MIB
    assert "jump" in v.reason


@pytest.mark.parametrize("jump_at", [30, 60, 150, 190])
def test_single_jump_anywhere_is_not_a_leak(jump_at):
    inc = np.zeros(200)
    inc[jump_at] = 8 * MIB
    v = leak_verdict(rss_series(inc, 64 * KIB, seed=jump_at), warmup_steps=10)
    assert v.verdict == "no leak", v.reason


def test_too_few_samples_is_inconclusive():
    v = leak_verdict(rss_series(np.full(25, MIB, dtype=float), 0, seed=6), warmup_steps=10)
    assert v.verdict == "inconclusive"
    assert "15 samples" in v.reason and "20" in v.reason
    # too short for a verdict, yet long enough (6+ samples) to say what it could not rule out
    assert v.slope_bytes_per_batch == pytest.approx(MIB, rel=0.01)
    assert v.bound_bytes_per_batch >= v.slope_bytes_per_batch
    five = leak_verdict(rss_series(np.full(15, MIB, dtype=float), 0, seed=6), warmup_steps=10)
    assert five.verdict == "inconclusive" and math.isnan(five.slope_bytes_per_batch)
    assert math.isnan(five.bound_bytes_per_batch)


def test_quantised_flat_without_noise_is_no_leak():
    v = leak_verdict([BASE] * 100, warmup_steps=0)
    assert v.verdict == "no leak", v.reason
    assert v.slope_bytes_per_batch == 0


def test_long_series_is_thinned_and_still_correct():
    v = leak_verdict(rss_series(np.full(5000, 32 * KIB, dtype=float), 64 * KIB, seed=7), warmup_steps=10)
    assert v.verdict == "leak"
    assert abs(v.slope_bytes_per_batch - 32 * KIB) / (32 * KIB) < 0.02


def test_leak_verdict_to_dict_and_format_bytes():
    d = leak_verdict([BASE] * 30, warmup_steps=0).to_dict()
    assert d["verdict"] == "no leak" and d["window"] == [0, 30]
    assert format_bytes(MIB * 1.5) == "1.5 MiB"
    assert format_bytes(-12 * KIB) == "-12.0 KiB"
    assert format_bytes(512) == "512 B"


# --------------------------------------------------------------------------- attribution


def test_attribute_compilation_first():
    r = attribute_growth({"jit_compiles": 3}, {"jit_compiles": 47, "steps": 100}, 10 * MIB, 100 * MIB, 50 * MIB)
    assert r["cause"] == "compilation"
    assert "jit_compiles 3 -> 47" in r["evidence"]
    r = attribute_growth({}, {"Trace_count": 2}, None, 0, None)
    assert r["cause"] == "compilation"


def test_attribute_heap_native_device_none():
    assert attribute_growth({}, {}, 80 * MIB, 100 * MIB, 0)["cause"] == "python heap"
    r = attribute_growth({}, {}, 10 * MIB, 100 * MIB, 0)
    assert r["cause"] == "native" and "10%" in r["evidence"]
    assert attribute_growth({}, {}, None, 100 * MIB, None)["cause"] == "native"
    assert attribute_growth({}, {}, 0, 2 * MIB, 300 * MIB)["cause"] == "device allocator"
    r = attribute_growth({"compiles": 5}, {"compiles": 5}, 0, 100 * KIB, 0)
    assert r["cause"] == "none"
    for r in (attribute_growth({}, {}, None, 100 * MIB, None), attribute_growth({}, {}, 0, 0, 0)):
        assert set(r) == {"cause", "evidence", "fix"} and r["fix"] and r["evidence"].endswith(".")


# --------------------------------------------------------------------------- step stats


def test_summarize_known_windows():
    # 5 windows of 10 steps; per-step times 0.010 .. 0.014 s
    s = summarize_steps([0.10, 0.11, 0.12, 0.13, 0.14], steps_per_window=10, batch=256)
    assert s.n_windows == 5 and s.steps_per_window == 10
    assert s.median_s == pytest.approx(0.012)
    assert s.q1_s == pytest.approx(0.011) and s.q3_s == pytest.approx(0.013)
    assert s.iqr_s == pytest.approx(0.002)
    assert s.p95_s == pytest.approx(0.0138)
    assert s.mean_s == pytest.approx(0.012)
    stdev = math.sqrt(sum((v - 0.012) ** 2 for v in (0.010, 0.011, 0.012, 0.013, 0.014)) / 4)
    assert s.stdev_s == pytest.approx(stdev)
    assert s.cv == pytest.approx(stdev / 0.012)
    assert s.samples_per_s == pytest.approx(256 / 0.012)
    assert s.min_s == pytest.approx(0.010) and s.max_s == pytest.approx(0.014)
    half = 2.7764451051977987 * stdev / math.sqrt(5)  # t(0.975, 4)
    assert s.ci95_low_s == pytest.approx(0.012 - half) and s.ci95_high_s == pytest.approx(0.012 + half)
    assert set(s.to_dict()) >= {"median_s", "iqr_s", "cv", "samples_per_s", "ci95_low_s"}


def test_summarize_single_window_and_errors():
    s = summarize_steps([0.5], steps_per_window=5, batch=10)
    assert s.median_s == pytest.approx(0.1) and s.samples_per_s == pytest.approx(100)
    assert math.isnan(s.ci95_low_s) and math.isnan(s.ci95_high_s) and math.isnan(s.cv)
    with pytest.raises(ValueError, match="no timed windows"):
        summarize_steps([], steps_per_window=5, batch=10)
    with pytest.raises(ValueError, match="steps_per_window"):
        summarize_steps([0.1], steps_per_window=0, batch=10)
    with pytest.raises(ValueError, match="finite and positive"):
        summarize_steps([0.1, float("nan")], steps_per_window=1, batch=10)


# --------------------------------------------------------------------------- warm-up


def test_detect_warmup_huge_first_and_two_slow_steps():
    rng = np.random.default_rng(8)
    steady = list(0.010 * (1 + rng.normal(0, 0.02, 60)))
    times = [5.0, 0.050, 0.030] + steady
    assert detect_warmup(times) == 3


def test_detect_warmup_edges():
    assert detect_warmup([]) == 0
    assert detect_warmup([1.0]) == 0
    assert detect_warmup([1.0, 0.01, 0.01, 0.01]) == 1  # first step always; cap 25% of 4 = 1
    assert detect_warmup([0.01] * 40) == 1  # steady from the start: only the compile step
    assert detect_warmup([1.0] * 10 + [0.01] * 10) == 5  # never settles within the cap: 25%
    # a slow step after a normal one is steady-state noise, not warm-up
    assert detect_warmup([2.0, 0.01, 0.5] + [0.01] * 30) == 1


# --------------------------------------------------------------------------- comparison


def test_mann_whitney_identical_not_significant():
    rng = np.random.default_rng(9)
    a = 0.010 * (1 + rng.normal(0, 0.02, 30))
    b = 0.010 * (1 + rng.normal(0, 0.02, 30))
    r = mann_whitney_slower(list(a), list(b))
    assert not r["significant"] and r["p_value"] > 0.05
    assert r["ratio_ci_low"] <= 1.0 <= r["ratio_ci_high"]
    assert set(r) == {"ratio", "ratio_ci_low", "ratio_ci_high", "p_value", "significant"}


def test_mann_whitney_20pct_slower_significant():
    rng = np.random.default_rng(10)
    a = 0.010 * (1 + rng.normal(0, 0.02, 30))
    b = 0.012 * (1 + rng.normal(0, 0.02, 30))
    r = mann_whitney_slower(list(a), list(b))
    assert r["significant"] and r["p_value"] < 1e-6
    assert r["ratio"] == pytest.approx(1.2, rel=0.03)
    assert 1.1 < r["ratio_ci_low"] < r["ratio"] < r["ratio_ci_high"] < 1.3
    assert mann_whitney_slower(list(a), list(b)) == r  # seeded: same inputs, same interval


def test_harness_modules_import_no_framework():
    """harness/ must never import a framework; checked statically so the test stays instant."""
    root = REPO / "harness"
    for name in ("measure/stats.py", "diagnose/leak.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in {"torch", "jax", "flax", "keras", "tensorflow"}, (name, mod)
