"""Time to a target: how long each framework takes, at each batch, to train the model to a given loss.

Samples per second alone favours the largest batch, but a larger batch needs more samples to reach the same
loss (AlgoPerf ranks training methods by the time to a target for this reason). vaebench splits the time:

    time to target(impl, batch) = compile + (steps_to_target(batch) - 1) x mean step(impl, batch)

* ``steps_to_target`` depends on the spec, the batch and the precision, not on the framework: the curves
  (``harness.run.curves``) train every build from the same weights on the same batches with the same noise,
  and ``harness.diagnose.curves`` checks that they follow the same path. So one reference curve per batch
  gives the steps, and each framework's cell (``harness.run.cell``) gives its compile and step times.
* the first step is the cell's ``compile_s`` (timed alone: tracing, compiling and running it), so the other
  ``steps - 1`` steps are counted at the **mean** step time, not the median: a training run's wall time is the
  sum of its steps, and the sum is ``n x mean``. Its 95% CI is carried from the mean's (Student's t over the
  cell's timed windows, ``harness.measure.stats``); the compile is one measurement and adds no width.
* a framework whose curve parted from the reference's trains on another path, so the reference's steps do
  not apply: its steps come from its own curve where it has one at that batch, and otherwise it has no time
  ("trains differently"). This is never assumed silently (``reports.time_to_target``).
* the shortcut is checked against whole runs timed end to end: ``python -m bench target-check``.

**The target.** The held-out reconstruction (BCE, nats per row, on the same held-out rows at every batch)
that closes ``TARGET_GAP`` (90%) of the gap between the reference's value at initialisation and where its curve
at the smallest batch of the run ends (the mean of its probes over the last 20% of the steps, as the curve
verdicts read the end: ``harness.diagnose.curves.final_mean``).

Why not "what the reference reaches after 80% of its steps": the held-out curve falls steeply, then flattens
into a floor where it moves with the training noise (dense, k=4, batch 32, 60 steps: 98.0 at step 0, 85.3 at
step 15, then 83.3-85.0 from step 20 on). A target read on the floor is first met by a chance dip (at step 25
there, and not before step 60 at batch 128), which measures noise. 90% of the way down lies on the steep part,
where a probe's noise moves the crossing by less than a probe interval (step 20 at both batches). A user's
target (``--target-recon``) replaces it.

**Steps to target** are the first probe step whose held-out reconstruction is at or below the target (a user
who evaluates at those steps and stops at the first evaluation that meets the target trains exactly that many
steps). The curves probe before each of the first ``every`` steps, where the curve falls fastest, then every
``every`` steps (``harness.run.curves.probe_due``). Not reached within the curve's steps is an answer of its own,
never extrapolated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.diagnose.curves import final_mean

#: the default target closes this fraction of the gap between the reference's start and where it ends
TARGET_GAP = 0.9


@dataclass(frozen=True)
class Target:
    """The held-out reconstruction to reach, and where it came from."""

    recon: float
    #: "reference" (read off the reference's curve) or "user" (``--target-recon``)
    source: str
    #: for a reference target: the impl and batch of the curve, its steps, and its start and end values
    impl: str | None = None
    batch: int | None = None
    steps: int | None = None
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(**{k: d.get(k) for k in ("recon", "source", "impl", "batch", "steps", "start", "end")})

    def describe(self) -> str:
        """"held-out reconstruction 85.2, 90% of the way from 98.0 at initialisation to 83.8, where torch ends 60
        steps at batch 32"."""
        head = f"held-out reconstruction {self.recon:,.4g}"
        if self.source == "user":
            return f"{head} (--target-recon)"
        return (f"{head}, {TARGET_GAP:.0%} of the way from {self.start:,.4g} at initialisation to {self.end:,.4g}, "
                f"where {self.impl} ends {self.steps:,} steps at batch {self.batch:,}")


def reference_target(probe_steps: list[int], recon: list[float], total_steps: int, batch: int,
                     impl: str) -> Target:
    """The default target (see the module docstring) from the reference's curve at the smallest batch."""
    if not probe_steps:
        raise ValueError(f"{impl}'s curve at batch {batch} has no probes to read a target from")
    start, end = float(recon[0]), final_mean(probe_steps, recon, total_steps)
    if not (math.isfinite(start) and math.isfinite(end)) or end >= start:
        raise ValueError(f"{impl}'s held-out reconstruction at batch {batch} did not fall ({start:,.4g} at "
                         f"initialisation, {end:,.4g} at the end), so no target can be read from it; pass --target-recon")
    return Target(end + (1 - TARGET_GAP) * (start - end), "reference", impl=impl, batch=batch, steps=total_steps,
                  start=start, end=end)


def user_target(recon: float) -> Target:
    if not math.isfinite(recon) or recon <= 0:
        raise ValueError(f"--target-recon {recon} must be a positive number (a held-out reconstruction in nats per row)")
    return Target(float(recon), "user")


@dataclass(frozen=True)
class StepsToTarget:
    """The steps (and samples) a curve took to reach the target; ``steps`` None: not within ``budget_steps``."""

    steps: int | None
    batch: int
    budget_steps: int

    @property
    def reached(self) -> bool:
        return self.steps is not None

    @property
    def samples(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch

    def describe(self) -> str:
        if self.steps is None:
            return f"not reached within {self.budget_steps:,} steps"
        return f"{self.steps:,} steps ({self.samples:,} samples)"


def steps_to_target(probe_steps: list[int], recon: list[float], target: float, batch: int,
                    budget_steps: int) -> StepsToTarget:
    """The first probe step at which the held-out reconstruction is at or below ``target``."""
    for step, value in zip(probe_steps, recon, strict=True):
        if math.isfinite(value) and value <= target:
            return StepsToTarget(int(step), batch, budget_steps)
    return StepsToTarget(None, batch, budget_steps)


@dataclass(frozen=True)
class TimeToTarget:
    """``compile + (steps - 1) x mean step`` with the 95% CI carried from the mean step's."""

    seconds: float
    ci_low: float
    ci_high: float

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    def overlaps(self, low: float, high: float) -> bool:
        """Whether this figure's CI and ``[low, high]`` share a point (how the shortcut check agrees)."""
        return self.has_ci and self.ci_low <= high and low <= self.ci_high


def time_to_target(steps: int, compile_s: float, mean_s: float, ci_low_s: float | None = None,
                   ci_high_s: float | None = None) -> TimeToTarget:
    """The separable time to target of one cell (see the module docstring). ``steps`` 0: the weights meet the
    target before training, and no time is needed."""
    if steps < 0:
        raise ValueError(f"steps to target must be at least 0, got {steps}")
    if steps == 0:
        return TimeToTarget(0.0, 0.0, 0.0)
    rest = steps - 1
    low = math.nan if ci_low_s is None else compile_s + rest * ci_low_s
    high = math.nan if ci_high_s is None else compile_s + rest * ci_high_s
    return TimeToTarget(compile_s + rest * mean_s, low, high)


__all__ = ["StepsToTarget", "TARGET_GAP", "Target", "TimeToTarget", "reference_target",
           "steps_to_target", "time_to_target", "user_target"]
