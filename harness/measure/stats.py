"""Small, careful statistics for step timings, in the spirit of pyperf.

Three questions, three functions:

* :func:`summarize_steps` - what is the step time of this run, and how sure are we?
* :func:`detect_warmup` - how many leading steps are warm-up and must not be timed?
* :func:`mann_whitney_slower` - is run ``b`` really slower (or faster) than run ``a``?

Why windows, not single steps: GPU work is asynchronous, so timing one step means
a device sync after every step, which itself changes what is measured (the host
can no longer queue the next step while the device works). The harness therefore
times a *window* of ``steps_per_window`` steps with one sync at the end and divides
by the window length. Every statistic here is computed on those per-step times.

Why the median is the headline: step times have a hard floor and a long right tail
(a GC pause, a host hiccup, another process). The median ignores the tail; the mean
is reported as well, with its confidence interval, because it is what total training
time is made of.

This module is framework-free on purpose (numpy and scipy only): the harness must
never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["StepStats", "summarize_steps", "detect_warmup", "mann_whitney_slower", "WARMUP_MAX_FRACTION"]

#: at most this fraction of the steps is ever called warm-up (the first step always is)
WARMUP_MAX_FRACTION = 0.25
#: a step is warm-up while it is slower than median + WARMUP_MADS x MAD of the steps after it
WARMUP_MADS = 3.0
#: the MAD is never taken below this fraction of the median (a timer with coarse ticks gives MAD = 0)
WARMUP_MAD_FLOOR = 0.01
#: scales the MAD to a standard deviation for normal data, so "3 MAD" reads like "3 sigma"
_MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class StepStats:
    """Per-step time statistics of one run; every ``*_s`` field is seconds per step.

    ``samples_per_s`` is the throughput at the median step time, ``batch / median_s``.
    ``cv`` is the coefficient of variation (stdev / mean), dimensionless.
    With a single window, ``stdev_s``, ``cv`` and the CI bounds are NaN: one sample says
    nothing about spread, and reporting 0 would claim a precision that was never measured.
    """

    n_windows: int
    steps_per_window: int
    median_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    p95_s: float
    mean_s: float
    ci95_low_s: float
    ci95_high_s: float
    stdev_s: float
    cv: float
    samples_per_s: float
    min_s: float
    max_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci95(values) -> tuple[float, float, float]:
    """(mean, low, high): the Student's t 95% CI of the mean (see ``summarize_steps`` for why t); NaN bounds from
    fewer than two values."""
    v = np.asarray(values, dtype=float).ravel()
    mean = float(v.mean()) if v.size else math.nan
    if v.size < 2:
        return mean, math.nan, math.nan
    from scipy import stats  # on first use: its ~1.3 s import is kept off python -m bench's start

    half = float(stats.t.ppf(0.975, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


def summarize_steps(window_times_s: list[float], steps_per_window: int, batch: int) -> StepStats:
    """Summarise timed windows as per-step statistics.

    Each element of ``window_times_s`` is the wall time of ``steps_per_window`` steps
    timed with one device sync at the end, so the per-step time is
    ``window_time / steps_per_window``.

    Quantiles use numpy's default linear interpolation (Hyndman & Fan type 7, the same
    as pandas and R's default), so ``q1_s``/``q3_s``/``p95_s`` can be checked by hand.
    ``stdev_s`` is the sample standard deviation (ddof=1).

    The 95% CI of the mean uses Student's t, not the bootstrap. Why: each sample is
    already the mean of ``steps_per_window`` steps, so by the central limit theorem
    window means are close to normal, which is t's only assumption. Runs usually have
    few windows (5-50), and with few samples a percentile bootstrap is too narrow - it
    can never be wider than the range of the data - while t widens honestly as n
    shrinks. t is also deterministic, so the same run always prints the same interval.

    Raises ValueError for no windows, a non-positive or non-finite time, or a
    non-positive ``steps_per_window`` or ``batch``. With one window the CI, stdev
    and CV are NaN (see :class:`StepStats`).
    """
    if isinstance(steps_per_window, bool) or not isinstance(steps_per_window, (int, np.integer)) \
            or steps_per_window < 1:
        raise ValueError(f"steps_per_window must be a positive integer, got {steps_per_window!r}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    windows = np.asarray(window_times_s, dtype=float).ravel()
    if windows.size == 0:
        raise ValueError("no timed windows to summarise: the run produced no samples after warm-up "
                         "(run more steps or fewer warm-up steps)")
    if not np.all(np.isfinite(windows)) or np.any(windows <= 0):
        bad = windows[~np.isfinite(windows) | (windows <= 0)][0]
        raise ValueError(f"window times must be finite and positive seconds, got {bad!r}")

    steps = windows / steps_per_window
    n = int(steps.size)
    q1, median, q3, p95 = (float(v) for v in np.percentile(steps, [25, 50, 75, 95]))
    mean, ci_low, ci_high = mean_ci95(steps)
    if n >= 2:
        stdev = float(steps.std(ddof=1))
        cv = stdev / mean
    else:
        stdev = cv = math.nan
    return StepStats(
        n_windows=n,
        steps_per_window=int(steps_per_window),
        median_s=median,
        q1_s=q1,
        q3_s=q3,
        iqr_s=q3 - q1,
        p95_s=p95,
        mean_s=mean,
        ci95_low_s=ci_low,
        ci95_high_s=ci_high,
        stdev_s=stdev,
        cv=cv,
        samples_per_s=batch / median,
        min_s=float(steps.min()),
        max_s=float(steps.max()),
    )


# --------------------------------------------------------------------------- warm-up


def detect_warmup(step_times_s: list[float]) -> int:
    """Return how many leading steps are warm-up and must be excluded from timing.

    Rule (deterministic, quotable):

    1. The first step is always warm-up: it carries compilation or tracing (XLA, graph
       building, cuDNN autotuning) in every framework, so it is never representative.
    2. Then, step by step from the front, step *k* is also warm-up while
       ``t[k] > median(t[k+1:]) + 3 * max(MAD(t[k+1:]), 1% of that median)``, where
       MAD is the median absolute deviation scaled by 1.4826 (so 3 MAD ~ 3 sigma for
       normal noise). The first step that passes ends the warm-up; later slow steps
       are noise of the steady state, not warm-up.
    3. At most 25% of the steps are ever called warm-up (at least 1), so a run that
       never settles keeps three quarters of its steps and shows its spread honestly.

    Why median/MAD: they are robust, so the warm-up steps being judged cannot inflate
    the yardstick they are judged by (a mean/stdev rule would be dragged up by the very
    outliers it should catch). The 1% floor stops a coarse timer (MAD = 0) from calling
    a step warm-up for being one tick slower.

    Fewer than two steps: returns 0, because calling the only step warm-up would leave
    nothing to measure.
    """
    t = np.asarray(step_times_s, dtype=float).ravel()
    n = int(t.size)
    if n < 2:
        return 0
    cap = max(1, int(n * WARMUP_MAX_FRACTION))
    k = 1
    while k < cap:
        rest = t[k + 1:]
        if rest.size == 0:
            break
        med = float(np.median(rest))
        mad = _MAD_TO_SIGMA * float(np.median(np.abs(rest - med)))
        spread = max(mad, WARMUP_MAD_FLOOR * abs(med))
        if not t[k] > med + WARMUP_MADS * spread:
            break
        k += 1
    return k


# --------------------------------------------------------------------------- comparison


def _median_ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(b, axis=axis) / np.median(a, axis=axis)


def mann_whitney_slower(a: list[float], b: list[float], alpha: float = 0.05) -> dict[str, Any]:
    """Compare the step times of run ``a`` (baseline) and run ``b``.

    Returns ``ratio`` = median(b) / median(a) (above 1: ``b`` is slower), a 95%
    bootstrap CI of that ratio (``ratio_ci_low``, ``ratio_ci_high``), the two-sided
    Mann-Whitney U ``p_value`` and ``significant`` = ``p_value < alpha``.

    Why Mann-Whitney: step times are skewed and tailed, so a t-test's normality
    assumption fails exactly where it matters; a rank test asks only whether one run
    tends to produce larger values than the other. The p-value says *whether* there
    is a difference; the ratio and its CI say *how large* it is, which is what a reader
    acts on - with thousands of steps a 0.5% difference is "significant" and irrelevant.

    The CI resamples each run independently (unpaired: step *i* of ``a`` has nothing
    to do with step *i* of ``b``), 2000 resamples, percentile method, fixed seed 0, so
    the same inputs always print the same interval. With fewer than two values in
    either run the CI is NaN.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError(f"need step times from both runs to compare, got {x.size} and {y.size}")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    ratio = float(_median_ratio(x, y))
    from scipy import stats as _st  # on first use, as above

    p_value = float(_st.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    low = high = math.nan
    if x.size >= 2 and y.size >= 2:
        seed = np.random.default_rng(0)
        # scipy >= 1.15 takes ``rng``; older releases (the project allows 1.11) only ``random_state``
        key = "rng" if "rng" in inspect.signature(_st.bootstrap).parameters else "random_state"
        res = _st.bootstrap((x, y), _median_ratio, n_resamples=2000, vectorized=True, paired=False,
                            confidence_level=0.95, method="percentile", **{key: seed})
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {
        "ratio": ratio,
        "ratio_ci_low": low,
        "ratio_ci_high": high,
        "p_value": p_value,
        "significant": bool(p_value < alpha),
    }
