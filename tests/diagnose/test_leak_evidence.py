"""The leak verdict on all the evidence, its confirmation and the scaled threshold, on synthetic series.

``harness.diagnose.evidence`` and ``harness.diagnose.leak`` only: no worker, no framework, milliseconds each.
The worker-level checks with planted adapters are in ``tests/diagnose/test_leak_confirmation.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.paths import FIXTURES

from harness.diagnose.evidence import (
    heap_trend,
    is_confirmed_leak,
    judge_confirmation,
    judge_steady,
    leak_label,
    settle,
)
from harness.diagnose.leak import leak_verdict, scaled_threshold, threshold_rule
from reports.cells import summarize_impl
from reports.recommend import recommend

KIB = 1024
MIB = KIB * KIB
BASE = 800 * MIB
#: dense k=7 b=512: 512 rows of 8,192 float32 k-mer frequencies
BATCH_K7_B512 = 512 * 8192 * 4
#: the CPU reference run of commit b49df6f (main command, k=7), stored before leak confirmations existed
REFERENCE = FIXTURES / "rows_before_leak_confirmation.jsonl"


def pages(y) -> list[int]:
    """Quantised to 4 KiB pages, as /proc reports RssAnon."""
    return [int(v) for v in np.round(np.asarray(y, dtype=float) / 4096) * 4096]


def flat(n: int, noise: float = 64 * KIB, seed: int = 0) -> np.ndarray:
    return BASE + np.random.default_rng(seed).normal(0, noise, n)


# --------------------------------------------------------------------------- the threshold


def test_threshold_scales_with_the_batch_between_floor_and_cap():
    assert scaled_threshold(32 * 32 * 4) == 8 * KIB  # dense k=3 b=32 (4 KiB a batch): the floor
    assert scaled_threshold(64 * 8192 * 4) == 16 * KIB  # dense k=7 b=64 (2 MiB)
    assert scaled_threshold(BATCH_K7_B512) == 128 * KIB  # dense k=7 b=512 (16 MiB)
    assert scaled_threshold(5000 * 8192 * 4) == MIB  # conv-final b=5000 (156 MiB): the cap
    assert scaled_threshold(0) == 8 * KIB
    rule = threshold_rule(BATCH_K7_B512)
    assert rule.startswith("128.0 KiB/batch") and "16.0 MiB" in rule and "1/128" in rule


def test_steady_verdict_records_threshold_and_rule():
    v = judge_steady(pages(flat(60)), None, {}, {}, scaled_threshold(BATCH_K7_B512), BATCH_K7_B512)
    assert v["threshold_bytes_per_batch"] == 128 * KIB and "1/128" in v["threshold_rule"]
    assert v["verdict"] == "no leak" and v["label"] == "no leak" and not v["pending_confirmation"]


# --------------------------------------------------------------------------- flat with one jump


def test_flat_with_one_jump_is_no_leak_and_needs_no_confirmation():
    y = flat(71)
    y[30:] += 80 * MIB
    v = judge_steady(pages(y), None, {"compiles": 3}, {"compiles": 3}, 16 * KIB)
    assert v["verdict"] == "no leak", v["reason"]
    assert v["jump_bytes"] > 70 * MIB and v["jump_step"] == 30
    assert not v["pending_confirmation"] and settle(v, None)["confirmed"] is None


# --------------------------------------------------------------------------- late arena jumps


def test_late_arena_jump_is_not_a_leak():
    """An 80 MiB arena early and a 40 MiB one at step 53 of 71: the first is set aside, the second is
    too late to make a trend. Not a leak (inconclusive), and no confirmation needed."""
    y = flat(71, 256 * KIB)
    y[5:] += 80 * MIB
    y[53:] += 40 * MIB
    v = judge_steady(pages(y), None, {}, {}, 128 * KIB)
    assert v["verdict"] != "leak", v["reason"]
    assert not v["pending_confirmation"]


def test_arena_jumps_read_leak_in_a_short_window_and_confirmation_refutes_it():
    """The flax dense b=512 case: an 80 MiB jump set aside, two more of 30 MiB, 71 steps: the steady window
    reads ~780 KiB/batch, "leak". The confirmation (one synchronised step at a time) is flat but for one
    more late arena: the leak is refuted, and the row reads what the longer series found, "no leak", with the
    leak phase's read kept beside it."""
    t = scaled_threshold(BATCH_K7_B512)
    y = flat(71, 256 * KIB)
    for at, mib in ((5, 80), (40, 30), (60, 30)):
        y[at:] += mib * MIB
    steady = judge_steady(pages(y), list(range(0, 17 * 1000, 1000)), {"compiles": 15}, {"compiles": 15}, t,
                          BATCH_K7_B512)
    assert steady["verdict"] == "leak" and steady["evidence"] == ["rss"], steady["reason"]
    assert steady["slope_bytes_per_batch"] > 4 * t and steady["pending_confirmation"]
    c = flat(222, 256 * KIB, seed=1)
    c[180:] += 90 * MIB  # a late arena jump in the confirmation too
    conf = judge_confirmation(pages(c), None, {"compiles": 15}, {"compiles": 15}, t, 60.0, "its 60 s cap")
    assert conf["signals"] == [] and conf["verdict"] == "no leak", conf["reason"]
    final = settle(steady, conf)
    assert final["verdict"] == "no leak" and final["confirmed"] is False and final["phase_verdict"] == "leak"
    assert final["label"] == "no leak" and not is_confirmed_leak(final)
    assert final["decided_by"] == "confirmation" and "does not confirm the leak phase's leak" in final["reason"]
    assert final["judged_steps"] == conf["rss"]["judged_steps"]  # the power stated is the confirmation's


def test_growth_in_two_quarters_only_is_not_recurring():
    """Two arenas in a confirmation window can make Theil-Sen read "leak"; the quarters say they do not recur."""
    t = 128 * KIB
    c = flat(220, 64 * KIB, seed=4)
    c[90:] += 120 * MIB
    c[140:] += 120 * MIB
    conf = judge_confirmation(pages(c), None, {}, {}, t)
    assert not conf["recurring"] and "rss" not in conf["signals"], conf["reason"]


# --------------------------------------------------------------------------- slow and real leaks


@pytest.mark.parametrize("rate, threshold", [(32 * KIB, 8 * KIB), (256 * KIB, 128 * KIB)],
                         ids=["32KiB-at-8KiB", "256KiB-at-128KiB"])
def test_slow_leak_is_confirmed(rate, threshold):
    steady = judge_steady(pages(flat(71, 64 * KIB) + rate * np.arange(71)), None, {}, {}, threshold)
    assert steady["verdict"] == "leak" and steady["pending_confirmation"], steady["reason"]
    conf = judge_confirmation(pages(flat(150, 64 * KIB, seed=5) + rate * np.arange(150)), None, {}, {}, threshold)
    assert conf["signals"] == ["rss"] and conf["recurring"], conf["reason"]
    assert conf["rss"]["slope_bytes_per_batch"] == pytest.approx(rate, rel=0.1)
    final = settle(steady, conf)
    assert final["label"] == "leak (confirmed)" and is_confirmed_leak(final) and final["evidence"] == ["rss"]


def test_confirmation_skips_its_own_warm_up():
    """After the memory phase's trim RSS regrows for a few steps: that regrowth is not a leak."""
    c = flat(150, 32 * KIB, seed=6)
    c[:20] -= np.linspace(60 * MIB, 0, 20)  # regrowing to its working set
    conf = judge_confirmation(pages(c), None, {}, {}, 16 * KIB)
    assert conf["warmup"] == 30 and conf["verdict"] == "no leak", conf["reason"]


# --------------------------------------------------------------------------- the Python heap


def test_rss_flat_then_climbing_is_never_no_leak():
    """The 256 KiB-a-step plug-in at 50 steps: RSS flat for 38 steps while the copies fill free heap pages,
    then 256 KiB a step. Theil-Sen alone sees a flat line; the second half says otherwise."""
    y = np.full(50, BASE, dtype=float)
    y[38:] += 256 * KIB * np.arange(1, 13)
    assert leak_verdict(pages(y), 0, 8 * KIB).verdict != "no leak"


def test_heap_rising_while_rss_flat_is_a_leak_signal_and_the_heap_confirms_it():
    t = 8 * KIB
    heap = [4 * MIB + 256 * KIB * i for i in range(12)]
    steady = judge_steady(pages(np.full(50, BASE)), heap, {}, {}, t)
    assert steady["rss_verdict"] == "no leak"
    assert steady["verdict"] == "leak" and steady["evidence"] == ["heap"], steady["reason"]
    assert steady["heap"]["trend"] == "rising" and steady["pending_confirmation"]
    assert "RSS alone read no leak" in steady["reason"]
    conf_heap = [4 * MIB + 256 * KIB * i for i in range(150)]
    conf = judge_confirmation(pages(np.full(150, BASE)), conf_heap, {}, {}, t)
    assert conf["signals"] == ["heap"], conf["reason"]
    final = settle(steady, conf)
    assert final["label"] == "leak (confirmed)" and final["evidence"] == ["heap"]


def test_unclear_heap_makes_no_leak_inconclusive_until_confirmation_settles_it():
    t = 128 * KIB
    heap = list(BASE / 8 + np.arange(12) * t * 0.9 + np.random.default_rng(3).normal(0, 300 * KIB, 12))
    assert heap_trend(heap, t)["trend"] == "unclear"
    steady = judge_steady(pages(flat(60)), heap, {}, {}, t)
    assert steady["rss_verdict"] == "no leak" and steady["verdict"] == "inconclusive", steady["reason"]
    assert steady["pending_confirmation"] and "disagrees" in steady["reason"]
    assert settle(steady, None)["verdict"] == "inconclusive"  # no confirmation: never "no leak"
    conf = judge_confirmation(pages(flat(150, seed=7)), [BASE // 8] * 150, {}, {}, t)
    final = settle(steady, conf)
    assert final["verdict"] == "no leak" and final["decided_by"] == "confirmation", final["reason"]
    assert final["evidence"] == ["rss", "heap"]


def test_heap_trend_unknown_flat_rising():
    assert heap_trend(None, 8 * KIB)["trend"] == "unknown"
    assert heap_trend([1, 2, 3], 8 * KIB)["trend"] == "unknown"
    assert heap_trend([MIB] * 20, 8 * KIB)["trend"] == "flat"
    assert heap_trend([MIB + 64 * KIB * i for i in range(20)], 8 * KIB)["trend"] == "rising"
    # early growth that plateaus is flat
    assert heap_trend([MIB + 64 * KIB * min(i, 5) for i in range(30)], 8 * KIB)["trend"] == "flat"


# --------------------------------------------------------------------------- compile counters


def test_compile_counter_rise_is_a_signal_and_confirmed_only_if_it_keeps_rising():
    steady = judge_steady(pages(flat(60)), None, {"compiles": 3}, {"compiles": 60}, 8 * KIB)
    assert steady["verdict"] == "leak" and steady["evidence"] == ["compile"], steady["reason"]
    assert steady["compile"]["rose"] == ["compiles 3 -> 60"]
    still = judge_confirmation(pages(flat(150)), None, {"compiles": 60}, {"compiles": 210}, 8 * KIB)
    assert settle(steady, still)["label"] == "leak (confirmed)"
    once = judge_confirmation(pages(flat(150)), None, {"compiles": 60}, {"compiles": 60}, 8 * KIB)
    assert settle(steady, once)["label"] == "no leak"  # it compiled during the steady window only: refuted
    assert settle(steady, None)["label"] == "leak (not confirmed)"  # no confirmation ran: a warning


# --------------------------------------------------------------------------- rows, old and new


def test_labels_of_new_and_old_rows():
    assert leak_label({"verdict": "leak", "confirmed": True}) == "leak (confirmed)"
    assert leak_label({"verdict": "leak", "confirmed": False}) == "leak (not confirmed)"
    assert leak_label({"verdict": "leak"}) == "leak (not confirmed)"  # a row from before confirmations
    assert leak_label({"verdict": "no leak"}) == "no leak" and leak_label(None) == "n/a"
    assert is_confirmed_leak({"verdict": "leak", "confirmed": True})
    assert not is_confirmed_leak({"verdict": "leak"}) and not is_confirmed_leak(None)


def test_steady_fields_are_json():
    v = settle(judge_steady(pages(flat(60)), [MIB] * 12, {}, {}, 8 * KIB), None)
    assert json.loads(json.dumps(v))["label"] == "no leak"


def _row(impl: str, median_s: float, leak: dict) -> dict:
    return {"impl": impl, "row": impl, "spec_name": "dense", "spec_hash": "h", "kmer": 7, "batch": 512,
            "status": "ok", "step_stats": {"median_s": median_s, "ci95_low_s": median_s * 0.99,
                                           "ci95_high_s": median_s * 1.01},
            "memory": {"peak_bytes": 100 * MIB}, "leak": {"slope_bytes_per_batch": 600 * KIB, **leak}}


def test_recommendation_excludes_only_confirmed_leaks_and_warns_of_the_rest():
    unconfirmed = _row("flax", 0.20, {"verdict": "leak", "confirmed": False, "reason": "arena jumps"})
    torch = _row("torch", 0.30, {"verdict": "no leak"})
    rec = recommend([unconfirmed, torch])
    assert rec.choice == "flax" and "Warning: leak not confirmed for flax" in rec.reason
    confirmed = _row("flax", 0.20, {"verdict": "leak", "confirmed": True, "evidence": ["rss"]})
    rec = recommend([confirmed, torch])
    assert rec.choice == "torch" and "flax leaks, confirmed" in rec.reason
    old = _row("flax", 0.20, {"verdict": "leak", "reason": "RSS grows 594 KiB/batch"})  # no confirmed field
    cell = summarize_impl([old])
    assert cell.eligible and cell.unconfirmed_leak and cell.leak_label == "leak (not confirmed)"
    assert recommend([old, torch]).choice == "flax"
    # the worst repeat decides the cell: one confirmed repeat excludes it
    assert not summarize_impl([unconfirmed, confirmed]).eligible


def test_reference_rows_from_before_confirmations_still_load_and_report(tmp_path):
    from reports.build import build_report

    rows = [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    assert not any("confirmed" in (r.get("leak") or {}) for r in rows)  # old rows, no new fields
    flax64 = [r for r in rows if r.get("impl") == "flax" and r.get("batch") == 64 and r.get("spec_name") == "dense"]
    assert flax64 and flax64[0]["leak"]["verdict"] == "leak"
    assert summarize_impl(flax64).eligible  # an old "leak" was never confirmed: a warning, not an exclusion
    out = build_report([REFERENCE], out_root=tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "leak (not confirmed)" in md and "Warning, leak not confirmed" in md


# --------------------------------------------------------------------------- the measured flax cell


def test_measured_flax_dense_b512_windows_read_leak_and_its_confirmation_does_not():
    """Anonymous RSS measured on flax dense k=7 b=512 (``tests/fixtures/flax_dense_k7_b512_rss.json``): the
    timed steady phase moves by up to +183 / -239 MiB at its timing-window boundaries (the prefetched window of
    16 MiB batches and the step's own 16-32 MiB buffers, kept or trimmed by glibc). About one 71-step stretch
    in ten reads "leak" on RSS alone, the 400 steps do not, and the one-step-at-a-time confirmation series
    finds no signal."""
    data = json.loads((FIXTURES / "flax_dense_k7_b512_rss.json").read_text())
    t = scaled_threshold(data["batch_bytes"])
    steady = data["steady"]
    verdicts = [leak_verdict(steady[i:i + 71], 0, t).verdict for i in range(len(steady) - 70)]
    assert 0.05 < verdicts.count("leak") / len(verdicts) < 0.2
    assert leak_verdict(steady, 0, t).verdict == "no leak"
    first_leak = verdicts.index("leak")
    judged = judge_steady(steady[first_leak:first_leak + 71], None, {}, {}, t, data["batch_bytes"])
    assert judged["verdict"] == "leak" and judged["pending_confirmation"]
    conf = judge_confirmation(data["confirmation"], None, {}, {}, t)
    assert conf["signals"] == [], conf["reason"]
    assert settle(judged, conf)["label"] in ("no leak", "inconclusive")
