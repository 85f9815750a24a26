"""Training memory from the spec's tensors: the framework-free arithmetic.

Split from :mod:`harness.diagnose.preflight` so the estimate has one home; the
per-impl terms (``impl``, ``device``) land here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class MemoryEstimate:
    state_bytes: int
    activation_bytes: int
    workspace_bytes: int
    eval_bytes: int

    @property
    def train_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.workspace_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "train_bytes": self.train_bytes}


def estimate_memory(tensors: list[Any], impl: str | None = None, device: str | None = None) -> MemoryEstimate:
    """The arithmetic in :mod:`harness.diagnose.preflight`'s docstring over ``tensor_table`` entries.

    ``impl`` and ``device`` name the framework and device the estimate is for; the framework-free
    terms ignore them.
    """
    state = sum(t.bytes for t in tensors if not t.per_sample)
    acts = [t for t in tensors if t.pass_ == "train" and t.per_sample]
    activation = sum(t.bytes for t in acts)
    weights = sum(t.bytes for t in tensors if t.kind == "weight")
    workspace = max(2 * max((t.bytes for t in acts if t.kind != "pool indices"), default=0), 2 * weights)
    evals = [t for t in tensors if t.pass_ == "eval"]
    # eval keeps no activations for backward: weights plus the two largest live activations
    eval_bytes = weights + sum(sorted((t.bytes for t in evals), reverse=True)[:2]) if evals else 0
    return MemoryEstimate(state, activation, workspace, eval_bytes)
