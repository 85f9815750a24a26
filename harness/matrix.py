"""The default matrix behind ``nox -s bench -- --kmer K``.

What runs depends on the device. A GPU gets every preset at batches up to
4,096 (preflight skips what cannot fit or would overflow int32). A CPU gets
batches its cores can step through in minutes, and a time budget for the
whole matrix that is split evenly over the cells: each cell runs its compile
and warm-up steps in full, then as many steady-state steps as its share
allows (never fewer than five). Time a fast cell leaves over goes to the
cells after it. So ``--kmer 7`` on two cores finishes in about its budget,
and every row says how many steps it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.adapter import is_installed
from harness.presets import PRESETS, preset
from harness.spec import SpecError, VAESpec, canonical_kmer_count, count_params

DEFAULT_IMPLS = ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]

#: batches per preset on a CPU: one or two sizes each, so the matrix fits a few minutes
CPU_BATCHES = {"dense": [64, 512], "conv-final": [32], "conv-revised": [8], "conv-original": [8]}
GPU_BATCHES = [64, 256, 1024, 4096]
#: on a CPU, presets above this many parameters are listed as skipped: one Adam step over
#: 270 million parameters (conv-revised at k=7) takes longer than the whole matrix's share
CPU_MAX_PARAMS = 100_000_000
#: seconds for all cells together on a CPU (the nox install and the report come on top);
#: the runner hands each cell what is left divided by the cells still to come
CPU_BUDGET_S = 420.0


@dataclass
class MatrixPlan:
    device: str
    impls: list[str]
    specs: list[tuple[VAESpec, list[int]]]
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (preset, reason): cannot be built at this k
    too_slow: list[tuple[VAESpec, str]] = field(default_factory=list)  # skipped on a CPU, with the reason
    omitted_impls: list[tuple[str, str]] = field(default_factory=list)
    budget_s: float | None = None

    def cell_count(self) -> int:
        return len(self.impls) * sum(len(b) for _, b in self.specs)


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
        n_params = count_params(spec).total
        if device != "gpu" and specs is None and n_params > CPU_MAX_PARAMS:
            plan.too_slow.append((spec, f"{n_params:,} parameters: a CPU training step takes minutes, beyond this "
                                        f"matrix's time budget; run it on a GPU, or alone with python -m bench run "
                                        f"--spec {name} --kmer {kmer} --batch 8"))
            continue
        sizes = batches or (GPU_BATCHES if device == "gpu" else CPU_BATCHES.get(name, [32]))
        plan.specs.append((spec, sizes))
    if device != "gpu":
        plan.budget_s = CPU_BUDGET_S if budget_s is None else budget_s
    else:
        plan.budget_s = budget_s
    return plan
