"""Training memory from the spec's tensors: the framework-free arithmetic, then per-impl terms.

Split from :mod:`harness.diagnose.preflight` so the estimate has one home.

**Framework-free.** :mod:`harness.diagnose.preflight`'s docstring: model state (weights,
gradients, Adam's m and v: 16 bytes a parameter), the activations kept for backward, and a
workspace margin (the larger of twice the largest activation and twice the weights).

**Per impl and device kind.** Where ``memory_factors.json`` (beside this module) has a fit for
the impl on this kind of device, the estimate is

    f_state * state_bytes + f_activation * activation_bytes + constant_bytes

and the framework-free workspace margin is dropped: the two factors and the constant stand for
what each framework really adds (its optimizer's temporaries, foreach Adam against XLA's fused
update; the allocator's rounding and caching; cuDNN and cuBLAS workspaces; what it keeps alive
across a step). They are fitted, not guessed: ``python -m bench fit-memory`` fits them from
measured cells (:mod:`harness.diagnose.memory_fit`) and writes the file with the device,
framework versions and cells they came from. An impl or device kind without a fit (a plug-in
adapter) keeps the framework-free estimate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: the shipped fits; ``python -m bench fit-memory --out`` rewrites it
FACTORS_PATH = Path(__file__).with_name("memory_factors.json")
MODEL = "f_state * state_bytes + f_activation * activation_bytes + constant_bytes"


@dataclass
class MemoryEstimate:
    state_bytes: int
    activation_bytes: int
    workspace_bytes: int
    eval_bytes: int
    #: the per-impl figure where a fit applies (None: the framework-free sum is the estimate)
    fitted_bytes: int | None = None
    #: the fit applied: impl, device, factors and where they came from
    factors: dict[str, Any] | None = None

    @property
    def framework_free_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.workspace_bytes

    @property
    def train_bytes(self) -> int:
        return self.fitted_bytes if self.fitted_bytes is not None else self.framework_free_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "framework_free_bytes": self.framework_free_bytes, "train_bytes": self.train_bytes}


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


def fitted_bytes(fit: dict[str, Any], state_bytes: float, activation_bytes: float) -> float:
    """:data:`MODEL` for one fit."""
    return fit["f_state"] * state_bytes + fit["f_activation"] * activation_bytes + fit["constant_bytes"]


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
    est = MemoryEstimate(state, activation, workspace, eval_bytes)
    fit = impl_factors(impl, device, factors)
    if fit is not None:
        est.fitted_bytes = int(round(fitted_bytes(fit, state, activation)))
        est.factors = {k: fit.get(k) for k in ("impl", "device", "device_name", "f_state", "f_activation",
                                               "constant_bytes", "versions", "source")}
    return est
