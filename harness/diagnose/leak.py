"""Is host memory leaking? A verdict from a per-batch series of anonymous RSS.

The input is ``RssAnon`` sampled once per batch (from ``/proc/self/status``, so in
whole kB with 4 KiB page granularity). Training legitimately grows memory for a while
- the allocator warms up, caches fill, an arena is added once - and then stays flat.
A leak keeps growing, batch after batch, until the end. The rule below tells the two
apart without being fooled by page quantisation or by one isolated jump.

Rule, in order (T = ``threshold_bytes_per_batch``; a cell passes :func:`scaled_threshold`):

0. **Floor** (the leak phase and the confirmation: ``floor_window`` 2). Each sample is the least of it
   and the one before: a buffer a framework holds every other step comes and goes; a leak stays.
1. **Window.** Only samples after ``warmup_steps`` count. Fewer than ``min_window``
   (default 20) samples: *inconclusive* - too short to tell a trend from noise.
2. **Spikes, then one jump, removed.** A sample more than ``SPIKE_OVER_THRESHOLD`` T away
   from the median of the five samples around it is a spike - the allocator
   holding a freed 100 MiB buffer at that sample and returning it at the next - and is
   replaced by that median. Then, if the single largest batch-to-batch increase exceeds
   both T and median + 10 MAD of all increases (and + 4 T: a noiseless series has no
   MAD), and the level after it stays up by at
   least half of it, it is treated as a one-off (an allocator arena growing once) and
   replaced by the median increase before fitting. Only one: growth that recurs is what
   a leak looks like. (Without the level check, a dip followed by its recovery was taken
   for a jump, and everything after it lowered: a clean flax dense k=7 b=512 leak phase
   read -1.3 MiB/batch, and an injected 256 KiB/batch read "inconclusive".)
3. **Slopes.** Theil-Sen (median of all pairwise slopes; robust to outliers and to
   the 4 KiB steps of quantised RSS) over the whole window, with its 95% CI, and
   separately over each half of the window. **Churn** bounds that CI: the series' step noise
   (:func:`step_noise`, the robust SD of its changes) gives a least-squares slope CI
   (:func:`churn_ci_half_width`), and the wider of the two is the slope's. Where more than a quarter
   of the samples are spikes, they are no outliers but the series' churn: no spike is set aside,
   and the reason says how much RSS churns. (Clean flax conv-final k=7 b=32 leak phases moved
   RSS by 28-51 MiB from step to step; a running median of five smoothed that into a line, and
   12 steps read "leak" at 6.7 MiB/batch, CI low 4.1 MiB, against an 8 KiB threshold. Now they
   read "could not rule out 7.5-18.7 MiB/batch".) The plateau rule of 5 needs the second half's
   slope below T by that half's churn CI too.
4. **Leak** when the whole-window CI low > T, *and* the second-half slope > T (still
   growing at the end, so early growth that plateaued is not a leak), *and* total
   growth over the window > 4 T (more than a few pages; from the median of its first
   five samples to that of its last five) and > 3 robust SDs of the series' noise about
   its line (keras-tensorflow conv-final k=7 b=32 switched between two levels 7.5 MiB
   apart; with more high samples late, 12 samples read a slope against an 8 KiB T).
   A slope that passes the first two but not this reads *inconclusive*.
5. **No leak** when the whole-window CI high < T and the second half grows by at most T
   a batch (a series flat for most of the window that starts to climb at its end - a
   leak that first filled free heap pages - is not "no leak"), or when the second-half
   slope is <= T/4 and its churn CI's high end <= T (the growth has plateaued).
6. Otherwise **inconclusive** (a slow or irregular trend: run longer to decide).

**Every verdict states its power.** From the slope's 95% CI the verdict derives the slope's
standard error SE = (CI high - CI low) / (2 x 1.96), and two figures a user can read:

* ``bound_bytes_per_batch``: the CI's high end, the largest leak a batch the series cannot rule
  out ("no leak above 3.4 KiB/batch", "could not rule out 23.2 KiB/batch in 12 steps": torch dense k=7
  b=512 and keras-tensorflow conv-final k=7 b=32, measured on a 2-core CPU on 2026-12-07);
* ``detectable_bytes_per_batch``: T + (1.96 + 0.84) SE, the smallest leak a batch that rule 4
  flags with 80% power on a series this noisy and this long (its estimate must clear T by 1.96 SE,
  and does so 80% of the time when the true slope sits 0.84 SE further up).

The leak phase (``harness.run.phases.leak``) uses the second to size itself: SE falls as the
window grows (n^-3/2 for independent noise), so :func:`steps_for` says how many samples would
bring the detectable leak down to a target.

**The threshold scales with the cell** (:func:`scaled_threshold`): T = 1/128 of the
bytes of one input batch, at least 8 KiB and at most 1 MiB a batch. A step that
allocates a 16 MiB batch and its activations moves RSS through allocator noise by far
more than a fixed 8 KiB: glibc grows and trims its heap in chunks of the size it is
asked for, so a short window of a clean dense k=7 b=512 cell (16 MiB a batch) fits
hundreds of KiB a batch. At 1/128 that cell's T is 128 KiB; a dense k=3 b=32 cell
(4 KiB a batch) keeps the 8 KiB floor; the cap keeps a 1 MiB-a-step leak visible in
any cell. The row records T (``leak.threshold_bytes_per_batch``) and the rule.

A "leak" read here is only the steady window's RSS evidence: :mod:`harness.diagnose.evidence`
adds the Python heap and the compile counters, and a confirmation phase that settles a
"leak" before it can exclude a row.

:func:`attribute_growth` then names the likely cause of growth from counters the
workers record (compile/trace counts, Python heap, device memory).

Framework-free on purpose: numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LeakVerdict", "floor", "leak_verdict", "scaled_threshold", "threshold_rule", "attribute_growth", "format_bytes",
           "detectable_leak", "power_line", "churn_ci_half_width", "slope_se", "step_noise", "steps_for", "CAUSES",
           "FIXES", "POWER"]

#: Theil-Sen keeps every pairwise slope (O(n^2) memory); longer windows are thinned to this many evenly
#: spaced samples, which leaves the slope unbiased and only widens its CI a little
MAX_FIT_POINTS = 1000
#: a batch-to-batch increase above median + JUMP_MADS x MAD of the increases is a candidate one-off jump
JUMP_MADS = 10.0
#: rule 4's growth must also pass this many robust SDs of the series' noise about its fitted line
GROWTH_OVER_NOISE = 3.0
#: a sample this many thresholds off the median of its neighbours is a spike
SPIKE_OVER_THRESHOLD = 4.0
#: a series shorter than its ``min_window`` is "inconclusive", but from this many samples its slope's CI is
#: still computed, so the row can say what it could not rule out
SHORT_FIT_MIN = 6
#: up to this share of a window's samples, spikes are outliers the filter sets aside; beyond it they are the
#: series' own churn, and its step noise is taken with them (:func:`step_noise`)
MAX_SPIKE_SHARE = 0.25
#: neighbours on each side that a sample's spike test looks at
SPIKE_HALF_WINDOW = 2
_MAD_TO_SIGMA = 1.4826
#: the threshold of a cell: this fraction of one input batch's bytes, between the floor and the cap
THRESHOLD_FRACTION = 1 / 128
THRESHOLD_FLOOR = 8 * 1024
THRESHOLD_CAP = 1024 * 1024
#: the granularity of RSS (a page): the least growth a series can show
RSS_PAGE_BYTES = 4096
#: the power a row's detectable leak is stated at, and the normal quantiles behind it
POWER = 0.80
_Z_CI = 1.959964  # two-sided 95%: the slope's CI
_Z_POWER = 0.841621  # one-sided 80%


@dataclass(frozen=True)
class LeakVerdict:
    """The verdict and the numbers behind it; slopes are in bytes per batch.

    ``window`` is the (start, stop) half-open range of sample indices judged.
    ``growth_bytes`` is the raw last-minus-first of the window (jump included).
    ``jump_bytes``/``jump_step`` describe the one-off jump removed by rule 2 (0 / None if none).
    """

    verdict: str
    slope_bytes_per_batch: float
    slope_ci_low: float
    slope_ci_high: float
    first_half_slope: float
    second_half_slope: float
    window: tuple[int, int]
    growth_bytes: int
    reason: str
    jump_bytes: int = 0
    jump_step: int | None = None
    #: the largest leak a batch the window cannot rule out (the slope CI's high end); NaN if too short
    bound_bytes_per_batch: float = math.nan
    #: the smallest leak a batch rule 4 flags with ``POWER`` on this window's noise and length
    detectable_bytes_per_batch: float = math.nan
    #: the robust SD of the window's step-to-step changes over sqrt 2 (:func:`step_noise`); NaN if too short
    step_noise_bytes: float = math.nan
    #: what the slope's CI came from: "theil-sen" (its own CI) or "step noise" (wider: the series churns)
    ci_from: str = "theil-sen"

    @property
    def judged_steps(self) -> int:
        return self.window[1] - self.window[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        d["judged_steps"] = self.judged_steps
        return d


def detectable_leak(threshold: float, ci_low: float, ci_high: float) -> float:
    """T + (1.96 + 0.84) SE, SE from the slope's 95% CI: the smallest leak a batch flagged with 80% power."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return math.nan
    se = max(0.0, ci_high - ci_low) / (2 * _Z_CI)
    return float(threshold + (_Z_CI + _Z_POWER) * se)


def step_noise(y: np.ndarray, lag: int = 1) -> float:
    """The series' noise about any smooth trend: the robust SD (1.4826 MAD) of its changes over ``lag`` steps,
    over sqrt 2 (a change is the difference of two independent draws). A trend moves every change alike and
    drops out with the median; an isolated spike or one arena jump moves one or two changes, which the median
    ignores; an allocator that returns and retakes hundreds of MiB every few steps moves most of them.
    A floored series (:func:`floor`) repeats a sample for ``lag - 1`` steps, so its changes are taken ``lag``
    apart: over one step, every other change of a floor over 2 is zero and the MAD would halve the churn (a clean
    flax conv-final k=7 b=32 leak phase read 10.5 MiB that way, 47 MiB over two steps)."""
    y = np.asarray(y, dtype=float)
    lag = max(1, int(lag))
    if y.size <= lag:
        return math.nan
    d = y[lag:] - y[:-lag]
    if d.size < 2:
        return math.nan
    return float(_MAD_TO_SIGMA * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def slope_se(noise: float, n: int) -> float:
    """The least-squares slope's standard error over ``n`` evenly spaced samples with independent noise of
    SD ``noise``: noise / sqrt(n (n^2 - 1) / 12). It falls as n^-3/2, which :func:`steps_for` relies on."""
    if n < 3 or not math.isfinite(noise):
        return 0.0
    return float(noise / math.sqrt(n * (n * n - 1) / 12.0))


def churn_ci_half_width(noise: float, n: int, floor_window: int = 1) -> float:
    """Half the 95% CI of a slope over ``n`` samples whose step noise is ``noise``: Student's t on n - 2 degrees
    of freedom times :func:`slope_se`, times sqrt(``floor_window``), because a floor over w steps makes
    neighbours share draws (a moving window's variance inflation is at most w). Checked by simulation
    (``tests/diagnose/test_leak_power.py::test_churn_ci_holds_its_coverage``): on independent normal and
    Student-t(3) noise, 12 to 48 samples, floors over 1 and 2 steps, the slope falls outside it about 5% of the
    time, as a 95% CI should."""
    if n < 3 or not math.isfinite(noise):
        return 0.0
    from scipy import stats  # on first use, as in _theil

    return float(stats.t.ppf(0.975, n - 2) * math.sqrt(max(1, int(floor_window))) * slope_se(noise, n))


def steps_for(target: float, threshold: float, detectable: float, n: int) -> int | None:
    """Samples that would bring the detectable leak from ``detectable`` (on ``n`` samples) to ``target``,
    with SE falling as n^-3/2; None where no length can (``target`` at or below T)."""
    if target <= threshold or not math.isfinite(detectable) or n < 2:
        return None
    if detectable <= target:
        return n
    return int(math.ceil(n * ((detectable - threshold) / (target - threshold)) ** (2 / 3)))


def power_line(leak: dict[str, Any] | None) -> str:
    """What a verdict could see, in a phrase: "no leak above 3.4 KiB/batch", "could not rule out 23.2 KiB/batch
    in 12 steps", "at least 253.0 KiB/batch" (a leak); an empty string for a row from before bounds were stored."""
    leak = leak or {}
    bound, n = leak.get("bound_bytes_per_batch"), leak.get("judged_steps")
    verdict = leak.get("verdict")
    if not isinstance(bound, (int, float)) or not math.isfinite(bound):
        return f"too short to judge ({n} steps)" if isinstance(n, int) and verdict == "inconclusive" else ""
    if verdict == "no leak":
        return f"no leak above {format_bytes(max(bound, 0.0))}/batch"
    if verdict == "inconclusive":
        return f"could not rule out {format_bytes(bound)}/batch in {n} steps"
    low = leak.get("slope_ci_low")
    return f"at least {format_bytes(low)}/batch" if isinstance(low, (int, float)) and math.isfinite(low) else ""


def scaled_threshold(batch_bytes: float) -> float:
    """T for a cell whose input batch holds ``batch_bytes``: 1/128 of it, between 8 KiB and 1 MiB a batch."""
    return float(min(THRESHOLD_CAP, max(THRESHOLD_FLOOR, float(batch_bytes or 0) * THRESHOLD_FRACTION)))


def threshold_rule(batch_bytes: float) -> str:
    """One line: the threshold a cell used, and how it was derived."""
    t = scaled_threshold(batch_bytes)
    return (f"{format_bytes(t)}/batch: 1/{round(1 / THRESHOLD_FRACTION)} of the {format_bytes(batch_bytes)} input batch, "
            f"between {format_bytes(THRESHOLD_FLOOR)} and {format_bytes(THRESHOLD_CAP)}")


def format_bytes(n: float) -> str:
    """Human-readable signed size in binary units: ``1.5 MiB``, ``-12.0 KiB``, ``512 B``."""
    if n is None or not math.isfinite(n):
        return "n/a"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{n:.0f} B"


def _theil(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """Theil-Sen slope and its 95% CI, thinned to MAX_FIT_POINTS samples."""
    if y.size < 2:
        return math.nan, math.nan, math.nan
    if y.size > MAX_FIT_POINTS:
        idx = np.unique(np.linspace(0, y.size - 1, MAX_FIT_POINTS).round().astype(int))
        y, x = y[idx], x[idx]
    from scipy import stats  # on first use: its ~1.3 s import is kept off python -m bench's start

    res = stats.theilslopes(y, x, alpha=0.95)
    return float(res[0]), float(res[2]), float(res[3])


def floor(y: np.ndarray, window: int) -> np.ndarray:
    """Each sample the least of itself and the ``window - 1`` before it: the memory held at every one of
    those steps. A framework that holds one step's 16 MiB output until the next step's (keras-torch at
    dense k=7 b=512 alternated 17.6 MiB up and down, step after step, after a heap trim) moves RSS by a
    buffer that comes and goes, which is no leak; a leak lifts the floor as it lifts every sample."""
    if window <= 1 or y.size == 0:
        return y
    padded = np.concatenate([np.full(window - 1, np.inf), y])
    return np.min(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)


def _remove_spikes(y: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Rule 2, first part: samples far off the median of the five around them, replaced by it (a Hampel
    filter with a fixed bound; one or two samples in a row). A linear trend, however steep, is its own local
    median, so a leak is never filtered."""
    n = y.size
    if n < 2 * SPIKE_HALF_WINDOW + 1:
        return y, 0
    out = y.copy()
    spikes = 0
    for i in range(n):
        lo, hi = max(0, i - SPIKE_HALF_WINDOW), min(n, i + SPIKE_HALF_WINDOW + 1)
        window = y[lo:hi]
        med = float(np.median(window))
        if abs(y[i] - med) > SPIKE_OVER_THRESHOLD * threshold:
            out[i] = med
            spikes += 1
    return out, spikes


def _remove_one_jump(y: np.ndarray, threshold: float, lag: int = 1) -> tuple[np.ndarray, int, int | None]:
    """Rule 2, second part: replace the single largest increase by the median one if it is an outlier and
    the level after it stays up (a step, not a dip's recovery). The typical increase is taken over ``lag``
    steps, per step: a floor over 2 steps turns a steady 256 KiB a step into a staircase of 0 and 512 KiB,
    whose 512 KiB risers are no jump."""
    if y.size < max(3, lag + 2):
        return y, 0, None
    d = np.diff(y)
    i = int(np.argmax(d))
    typical = (y[lag:] - y[:-lag]) / lag
    med = float(np.median(typical))
    mad = _MAD_TO_SIGMA * float(np.median(np.abs(typical - med)))
    level = float(np.median(y[i + 1:]) - np.median(y[:i + 1]))
    if d[i] > threshold and d[i] > med + max(JUMP_MADS * mad, SPIKE_OVER_THRESHOLD * threshold) \
            and level >= 0.5 * d[i]:
        jump = float(d[i] - med)
        fixed = y.copy()
        fixed[i + 1:] -= jump
        return fixed, int(round(jump)), i + 1
    return y, 0, None


def leak_verdict(rss_anon_bytes: list[int], warmup_steps: int, threshold_bytes_per_batch: float = 8192,
                 min_window: int = 20, floor_window: int = 1) -> LeakVerdict:
    """Judge a per-batch anonymous-RSS series: "leak", "no leak" or "inconclusive".

    ``rss_anon_bytes[i]`` is RssAnon in bytes after batch ``i``; the rule is in the
    module docstring. ``reason`` is one sentence naming the rule that fired. ``floor_window``
    above 1 judges the series' floor, each sample the least of it and the ``floor_window - 1``
    before it (``floor``).
    """
    y_all = floor(np.asarray(rss_anon_bytes, dtype=float).ravel(), floor_window)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if threshold_bytes_per_batch <= 0:
        raise ValueError(f"threshold_bytes_per_batch must be positive, got {threshold_bytes_per_batch!r}")
    t = float(threshold_bytes_per_batch)
    start, stop = min(int(warmup_steps), y_all.size), y_all.size
    y = y_all[start:stop]
    x = np.arange(start, stop, dtype=float)
    n = int(y.size)
    growth = int(round(y[-1] - y[0])) if n else 0
    nan = math.nan
    if n < max(int(min_window), 2):
        # too short for a verdict; from SHORT_FIT_MIN samples the slope's CI still bounds what it could see
        slope, low, high = _theil(y, x) if n >= SHORT_FIT_MIN else (nan, nan, nan)
        churn = step_noise(y, floor_window) if n >= SHORT_FIT_MIN else nan
        half_width = churn_ci_half_width(churn, n, floor_window)
        churned = half_width > (high - low) / 2
        if churned:
            low, high = slope - half_width, slope + half_width
        return LeakVerdict("inconclusive", slope, low, high, nan, nan, (start, stop), growth,
                           f"only {n} samples after {start} warm-up steps, fewer than the {min_window} needed "
                           "to tell a trend from noise; run more steps", bound_bytes_per_batch=high,
                           detectable_bytes_per_batch=detectable_leak(t, low, high), step_noise_bytes=churn,
                           ci_from="step noise" if churned else "theil-sen")

    despiked, spikes = _remove_spikes(y, t)
    if spikes > n * MAX_SPIKE_SHARE:
        # not outliers but the series' own churn: a running median of it would fake a smooth line, so the
        # series is fitted as it is, and its churn bounds the slope's CI (rule 3, second part)
        despiked, spikes, churning = y, 0, True
    else:
        churning = False
    fixed, jump, jump_at = _remove_one_jump(despiked, t, lag=max(1, int(floor_window)))
    jump_step = None if jump_at is None else start + jump_at
    slope, low, high = _theil(fixed, x)
    churn = step_noise(fixed, floor_window)
    churn_half = churn_ci_half_width(churn, n, floor_window)
    churned = churn_half > (high - low) / 2
    if churned:
        low, high = slope - churn_half, slope + churn_half
    half = n // 2
    first = _theil(fixed[:half], x[:half])[0]
    second = _theil(fixed[half:], x[half:])[0]
    second_half_width = churn_ci_half_width(churn, n - half, floor_window)
    # growth between the medians of the first and last five samples: an end sample caught mid-trim moves it less
    ends = min(5, max(1, n // 4))
    fixed_growth = float(np.median(fixed[-ends:]) - np.median(fixed[:ends]))
    # the noise about the fitted line, robustly: growth that a level switch of this size explains is no trend
    residuals = fixed - slope * x
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(residuals - np.median(residuals))))
    churn_note = (f"; RSS churns by {format_bytes(churn)} from step to step (robust SD of its changes; the allocator "
                  f"returns and retakes pages), so {n} steps resolve no less than {format_bytes(high - slope)}/batch "
                  "either side of the slope") if churning or (churned and churn_half > t) else ""
    notes = ([f"{spikes} spike{'s' if spikes > 1 else ''} set to the median of {'their' if spikes > 1 else 'its'} "
              "neighbours"] if spikes else []) + (
        [f"one {format_bytes(jump)} jump at step {jump_step} set aside"] if jump else [])
    jump_note = (f" (after {' and '.join(notes)})" if notes else "") + churn_note

    detectable = detectable_leak(t, low, high)
    # RSS moves in whole pages: over n samples a leak under a page per n - 1 batches need not move it at all, so no
    # series can rule out less than that (a flat keras-jax series read "no leak above 0 B/batch")
    bound = max(high, RSS_PAGE_BYTES / max(1, n - 1))

    def verdict(v: str, reason: str) -> LeakVerdict:
        return LeakVerdict(v, slope, low, high, first, second, (start, stop), growth, reason + jump_note,
                           jump, jump_step, bound_bytes_per_batch=bound, detectable_bytes_per_batch=detectable,
                           step_noise_bytes=churn, ci_from="step noise" if churned else "theil-sen")

    per = "/batch"
    if low > t and second > t and fixed_growth > max(4 * t, GROWTH_OVER_NOISE * noise):
        return verdict("leak", f"RSS grows {format_bytes(slope)}{per} (95% CI low {format_bytes(low)}{per}) "
                               f"and still {format_bytes(second)}{per} in the second half, above the "
                               f"{format_bytes(t)}{per} threshold")
    if high < t and second <= t:
        return verdict("no leak", f"slope 95% CI high {format_bytes(high)}{per} is below the "
                                  f"{format_bytes(t)}{per} threshold")
    if low > t and second > t:
        return verdict("inconclusive", f"RSS grows {format_bytes(slope)}{per} (95% CI low {format_bytes(low)}{per}), "
                                       f"but its {format_bytes(fixed_growth)} over the window is within "
                                       f"{GROWTH_OVER_NOISE:g} x its {format_bytes(noise)} noise about the line "
                                       "(a level the allocator switches to and from); run longer")
    if second <= t / 4 and second + second_half_width <= t:
        return verdict("no leak", f"growth plateaued: second-half slope {format_bytes(second)}{per} is at most "
                                  f"a quarter of the {format_bytes(t)}{per} threshold")
    return verdict("inconclusive", f"slope {format_bytes(slope)}{per} (95% CI {format_bytes(low)} to "
                                   f"{format_bytes(high)}) and second-half slope {format_bytes(second)}{per} "
                                   f"are neither clearly above nor below {format_bytes(t)}{per}; run longer")


# --------------------------------------------------------------------------- attribution

CAUSES = ("compilation", "device allocator", "python heap", "native", "none")

FIXES = {
    "compilation": "Keep input shapes and dtypes static (pad or drop the last batch) and avoid Python values "
                   "that retrigger tracing; every new signature adds a compiled program to the cache.",
    "device allocator": "Look for device tensors kept alive across steps (e.g. summed losses not detached or "
                        "converted with .item()) and compare allocated with reserved memory.",
    "python heap": "Look for Python objects kept across steps (losses or outputs appended to a list, "
                   "histories, closures); keep plain floats, not framework tensors.",
    "native": "Growth is outside the Python heap: check framework caches and data-loader workers, and retry "
              "with MALLOC_ARENA_MAX=2 or jemalloc to rule out allocator fragmentation.",
    "none": "Nothing to fix: memory did not grow meaningfully.",
}


def attribute_growth(counters_first: dict[str, int | float], counters_last: dict[str, int | float],
                     heap_growth_bytes: int | None, anon_growth_bytes: int, device_growth_bytes: int | None,
                     min_bytes: int = 1 << 20) -> dict[str, str]:
    """Name the most likely cause of memory growth between two points of a run.

    Checked in this order, first match wins (growth below ``min_bytes``, 1 MiB, is noise):

    1. **compilation** - any counter whose name contains "compile" or "trace" rose
       (a counter missing from ``counters_first`` counts from 0). Recompilation grows
       host *and* device memory, so it explains the others and is checked first.
    2. **device allocator** - device memory grew by at least ``min_bytes`` and by more
       than anonymous RSS did.
    3. **python heap** - anon RSS grew by at least ``min_bytes`` and Python heap growth
       (e.g. tracemalloc) accounts for at least 50% of it.
    4. **native** - anon RSS grew by at least ``min_bytes`` otherwise (or the heap was not measured).
    5. **none** - nothing grew by ``min_bytes``.

    Returns ``{"cause", "evidence", "fix"}``: the cause, one sentence with the numbers,
    and one line of generic advice.
    """
    anon = float(anon_growth_bytes)
    dev = None if device_growth_bytes is None else float(device_growth_bytes)
    heap = None if heap_growth_bytes is None else float(heap_growth_bytes)

    rose = []
    for name, last in counters_last.items():
        lname = name.lower()
        if "compile" in lname or "trace" in lname:
            before = counters_first.get(name, 0) or 0
            if last is not None and last > before:
                rose.append(f"{name} {before:g} -> {last:g}")

    def out(cause: str, evidence: str) -> dict[str, str]:
        return {"cause": cause, "evidence": evidence, "fix": FIXES[cause]}

    anon_txt = f"anon RSS {_signed(anon)}"
    dev_txt = "device memory not measured" if dev is None else f"device memory {_signed(dev)}"
    if rose:
        return out("compilation", f"compile/trace counters rose ({'; '.join(rose)}); {anon_txt}, {dev_txt}.")
    if dev is not None and dev >= min_bytes and dev > anon:
        return out("device allocator", f"device memory {_signed(dev)}, more than {anon_txt}.")
    if anon >= min_bytes:
        if heap is not None and heap >= 0.5 * anon:
            return out("python heap", f"Python heap {_signed(heap)} explains {heap / anon:.0%} of {anon_txt}.")
        if heap is None:
            return out("native", f"{anon_txt} with the Python heap not measured, so it is counted as native.")
        return out("native", f"{anon_txt} but the Python heap only {_signed(heap)} ({max(heap, 0) / anon:.0%}).")
    return out("none", f"{anon_txt} and {dev_txt}, below {format_bytes(min_bytes)}.")


def _signed(n: float) -> str:
    return ("+" if n >= 0 else "") + format_bytes(n)
