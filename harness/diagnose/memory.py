"""Training memory from the spec's tensors: the framework-free arithmetic, then per-impl terms.

Split from :mod:`harness.diagnose.preflight` so the estimate has one home.

**Framework-free.** :mod:`harness.diagnose.preflight`'s docstring: model state (weights,
gradients, Adam's m and v: 16 bytes a parameter), the activations kept for backward, and a
workspace margin (the larger of twice the largest activation and twice the weights).

**Per impl and device kind.** Where ``memory_factors.json`` (beside this module) has a fit for
the impl on this kind of device, the estimate is

    f_state * state_bytes + f_activation * activation_bytes + f_program * program_ops + constant_bytes

(``program_ops``: the layers the step runs, for the program a compiling framework holds resident;
``harness.diagnose.memory_fit``'s docstring) and the framework-free workspace margin is dropped: the
factors and the constant stand for what each framework really adds (its optimizer's temporaries, foreach Adam against XLA's fused
update; the allocator's rounding and caching; cuDNN and cuBLAS workspaces; what it keeps alive
across a step). They are fitted, not guessed: ``python -m bench fit-memory`` fits them from
measured cells (:mod:`harness.diagnose.memory_fit`) and writes the file with the device,
framework versions and cells they came from. An impl or device kind without a fit (a plug-in
adapter) keeps the framework-free estimate.

**The constant is measured** where the fit's rows carry it (CPU fits since issue 25): each worker
measures its framework's footprint past the import, after a tiny model's first steps and before the
cell's model is built (``harness.run.phases.footprint``). Only the two factors are fitted then, on
what each cell measured past its own worker's footprint; the estimate's constant is this machine's
latest footprint readings (``harness.diagnose.footprints``), else the median of the fit's workers'.
At small k the constant is most of a cell (the runtime's 60-70 MiB against a few MiB of model): a
constant fitted to k=7 cells on another machine was off by 100-190 MiB there.

**An interval.** Such a fit is validated leave one spec out (``held_out``): every spec's cells are
estimated from the other specs' fit, and the least and greatest of those held-out ratios bound what
a new spec's estimate E stands for: a measured peak between E / ratio_high and E / ratio_low
(``interval_bytes``). Preflight's memory verdict compares the high end (``upper_bytes``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: the shipped fits; ``python -m bench fit-memory --out`` rewrites it
FACTORS_PATH = Path(__file__).with_name("memory_factors.json")
MODEL = "f_state * state_bytes + f_activation * activation_bytes + f_program * program_ops + constant_bytes"


@dataclass
class MemoryEstimate:
    state_bytes: int
    activation_bytes: int
    workspace_bytes: int
    eval_bytes: int
    #: the layers the train step runs (each residual opened up): the size of its compiled program
    program_ops: int = 0
    #: the per-impl figure where a fit applies (None: the framework-free sum is the estimate)
    fitted_bytes: int | None = None
    #: the fit applied: impl, device, factors and where they came from
    factors: dict[str, Any] | None = None
    #: the interval the fit's held-out cells give the estimate: (low, high) bytes; None without one
    interval_bytes: tuple[int, int] | None = None

    @property
    def upper_bytes(self) -> int:
        """The interval's high end where there is one: what preflight's memory verdict compares."""
        return self.interval_bytes[1] if self.interval_bytes else self.train_bytes

    @property
    def framework_free_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.workspace_bytes

    @property
    def train_bytes(self) -> int:
        return self.fitted_bytes if self.fitted_bytes is not None else self.framework_free_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "framework_free_bytes": self.framework_free_bytes, "train_bytes": self.train_bytes,
                "upper_bytes": self.upper_bytes}


def device_kind(device: str | None) -> str | None:
    """"gpu" or "cpu" from a device name ("gpu", "cuda:0", "cpu", "NVIDIA H200"); None if unknown."""
    if not device:
        return None
    d = device.lower()
    if d.startswith(("gpu", "cuda", "nvidia", "rocm")):
        return "gpu"
    return "cpu" if d.startswith("cpu") else None


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_factors(path: str | Path | None = None) -> dict[str, Any]:
    """The factors file (``{}`` where it is missing or unreadable: the estimate stays framework-free)."""
    return _load(str(path or FACTORS_PATH))


def impl_factors(impl: str | None, device: str | None, factors: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The fit for ``impl`` on ``device``'s kind, or None."""
    kind = device_kind(device)
    if not impl or not kind:
        return None
    data = load_factors() if factors is None else factors
    for fit in data.get("fits", []):
        if fit.get("impl") == impl and fit.get("device") == kind:
            return fit
    return None


def fitted_bytes(fit: dict[str, Any], state_bytes: float, activation_bytes: float, program_ops: float = 0,
                 constant: float | None = None) -> float:
    """:data:`MODEL` for one fit; ``constant`` replaces the fit's own where given (a footprint measured here).
    A fit without ``f_program`` (bytes per op; GPU fits and fits before it) has no program term."""
    const = fit["constant_bytes"] if constant is None else constant
    return (fit["f_state"] * state_bytes + fit["f_activation"] * activation_bytes
            + (fit.get("f_program") or 0.0) * program_ops + const)


def count_program_ops(tensors: list[Any]) -> int:
    """The layers the train step runs, from ``tensor_table``: each writes one per-sample tensor (the input and the
    loss terms are not layers)."""
    return len({t.layer for t in tensors if t.pass_ == "train" and t.per_sample and t.op not in ("input", "loss")})


def _constant(fit: dict[str, Any], impl: str, device: str | None) -> tuple[float, str]:
    """The constant and where it came from: this machine's measured footprint (``harness.diagnose.footprints``),
    else the median the fit's workers measured, else (an older fit) the fitted one."""
    if fit.get("constant") != "measured":
        return float(fit["constant_bytes"]), "fitted"
    if device_kind(device) == "cpu":
        from harness.diagnose.footprints import local_footprint

        local = local_footprint(impl)
        if local is not None:
            return float(local), "measured on this machine"
    return float(fit["constant_bytes"]), f"measured on {fit.get('device_name') or 'the fit machine'}"


def estimate_memory(tensors: list[Any], impl: str | None = None, device: str | None = None,
                    factors: dict[str, Any] | None = None) -> MemoryEstimate:
    """The arithmetic in :mod:`harness.diagnose.preflight`'s docstring over ``tensor_table`` entries,
    then the fitted terms for ``impl`` on ``device`` ("gpu"/"cpu") where ``factors`` (default: the
    shipped file) has them."""
    state = sum(t.bytes for t in tensors if not t.per_sample)
    acts = [t for t in tensors if t.pass_ == "train" and t.per_sample]
    activation = sum(t.bytes for t in acts)
    weights = sum(t.bytes for t in tensors if t.kind == "weight")
    workspace = max(2 * max((t.bytes for t in acts if t.kind != "pool indices"), default=0), 2 * weights)
    evals = [t for t in tensors if t.pass_ == "eval"]
    # eval keeps no activations for backward: weights plus the two largest live activations
    eval_bytes = weights + sum(sorted((t.bytes for t in evals), reverse=True)[:2]) if evals else 0
    est = MemoryEstimate(state, activation, workspace, eval_bytes, count_program_ops(tensors))
    fit = impl_factors(impl, device, factors)
    if fit is not None:
        constant, constant_from = _constant(fit, str(impl), device)
        est.fitted_bytes = int(round(fitted_bytes(fit, state, activation, est.program_ops, constant)))
        est.factors = {k: fit.get(k) for k in ("impl", "device", "device_name", "f_state", "f_activation",
                                               "f_program", "constant_bytes", "versions", "source", "held_out")}
        est.factors.update(constant_used_bytes=int(round(constant)), constant_from=constant_from)
        held = fit.get("held_out") or {}
        if held.get("ratio_low") and held.get("ratio_high"):
            est.interval_bytes = (int(est.fitted_bytes / held["ratio_high"]), int(est.fitted_bytes / held["ratio_low"]))
    return est
