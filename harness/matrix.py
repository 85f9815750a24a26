"""The default matrix behind ``nox -s bench -- --kmer K``.

What runs depends on the device. A GPU gets every preset at batches up to
4,096 (preflight skips what cannot fit or would overflow int32). A CPU gets
batches its cores can step through in minutes, and a time budget for the
whole matrix that is split evenly over the cells: each cell runs its compile
and warm-up steps in full, then as many steady-state steps as its share
allows (never fewer than ten). So ``--kmer 7`` on two cores finishes within
its budget, and says in every row how many steps it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.adapter import is_installed
from harness.presets import PRESETS, preset
from harness.spec import SpecError, VAESpec, canonical_kmer_count

DEFAULT_IMPLS = ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]

#: batches per preset on a CPU: one or two sizes each, so the matrix fits a few minutes
CPU_BATCHES = {"dense": [64, 512], "conv-final": [32], "conv-revised": [8], "conv-original": [8]}
GPU_BATCHES = [64, 256, 1024, 4096]
#: seconds for all cells together on a CPU (the nox install and the report come on top)
CPU_BUDGET_S = 420.0
#: what a cell spends before its own clock starts (interpreter start, harness imports);
#: the framework import, build, compile and warm-up count against the cell's budget
CELL_OVERHEAD_S = 1.5


@dataclass
class MatrixPlan:
    device: str
    impls: list[str]
    specs: list[tuple[VAESpec, list[int]]]
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (preset, reason): cannot be built at this k
    omitted_impls: list[tuple[str, str]] = field(default_factory=list)
    budget_s: float | None = None

    def cell_count(self) -> int:
        return len(self.impls) * sum(len(b) for _, b in self.specs)

    def cell_budget_s(self) -> float | None:
        if not self.budget_s or not self.cell_count():
            return None
        return max(5.0, self.budget_s / self.cell_count() - CELL_OVERHEAD_S)


def plan_default(kmer: int, device: str, budget_s: float | None = None, impls: list[str] | None = None,
                 specs: list[str] | None = None, batches: list[int] | None = None) -> MatrixPlan:
    canonical_kmer_count(kmer)  # validates k
    length = canonical_kmer_count(kmer)
    chosen = list(impls or DEFAULT_IMPLS)
    omitted = []
    if impls is None and not is_installed("keras-tensorflow"):
        chosen.remove("keras-tensorflow")
        omitted.append(("keras-tensorflow", "TensorFlow is not installed (an extra row; pip install tensorflow-cpu)"))
    plan = MatrixPlan(device, chosen, [], omitted_impls=omitted)
    for name in specs or list(PRESETS):
        try:
            spec = preset(name, length)
        except SpecError as exc:
            plan.invalid.append((name, str(exc)))
            continue
        sizes = batches or (GPU_BATCHES if device == "gpu" else CPU_BATCHES.get(name, [32]))
        plan.specs.append((spec, sizes))
    if device != "gpu":
        plan.budget_s = CPU_BUDGET_S if budget_s is None else budget_s
    else:
        plan.budget_s = budget_s
    return plan
