"""The default matrix behind ``nox -s bench -- --kmer K``.

What runs depends on the device. A GPU gets every preset at batches up to
4,096 (preflight skips what cannot fit, and, per impl, what its framework's
kernels cannot run past 2^31 elements: ``harness.diagnose.int32``). A CPU gets
batches its cores can step through in minutes, and a time budget for the
whole matrix that is split evenly over the cells: each cell runs its compile
and warm-up steps in full, then as many steady-state steps as its share
allows (never fewer than five). Time a fast cell leaves over goes to the
cells after it. So ``--kmer 7`` on two cores finishes in about its budget,
and every row says how many steps it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.adapter import BUILTIN, is_installed
from harness.diagnose.preflight import preflight_cell
from harness.run.runner import Cell, plan_cells
from harness.spec.flops import format_flops, step_flops
from harness.spec.layers import SpecError
from harness.spec.params import count_params
from harness.spec.presets import ALL_PRESETS, preset
from harness.spec.schema import VAESpec, canonical_kmer_count

#: batches per preset on a CPU: one or two sizes each, so the matrix fits a few minutes
CPU_BATCHES = {"dense": [64, 512], "conv-final": [32], "conv-revised": [8], "conv-original": [8],
               "masked-multiomics": [64]}
#: the seeds' conv presets, which a CPU matrix lists as skipped unless ``--spec`` names them: their
#: strided and attention layers run far below a CPU's matmul rate (conv-strided took 18-19 s a step at
#: batch 32 and k=7 in flax and keras-jax on 2 cores, issue 13), so one cell would take the whole budget
CPU_ONLY_WHEN_NAMED = ("conv-strided", "resvae", "autoencoder-kl")
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
    chosen = list(impls or BUILTIN)
    omitted = []
    for name in [n for n in chosen if impls is None and BUILTIN[n].optional and not is_installed(n)]:
        chosen.remove(name)  # an extra row (its record's ``optional``)
        omitted.append((name, f"{', '.join(BUILTIN[name].missing())} is not installed (an extra row; "
                              f"pip install {BUILTIN[name].requirement})"))
    plan = MatrixPlan(device, chosen, [], omitted_impls=omitted)
    for name in specs or list(ALL_PRESETS):
        try:
            spec = preset(name, length)
        except SpecError as exc:
            plan.invalid.append((name, str(exc)))
            continue
        if device != "gpu" and specs is None and name in CPU_ONLY_WHEN_NAMED:
            per_sample = step_flops(spec, 1).total
            plan.too_slow.append((spec, f"{format_flops(per_sample)} per sample a step, in strided or attention "
                                        "layers a CPU runs far below its matmul rate; the matrix runs it on a GPU, "
                                        f"or name it: python -m bench run --spec {name} --kmer {kmer} --batch 8"))
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


@dataclass
class MatrixCells:
    """The cells of a plan, each with its preflight verdict for its own impl: an int32 overflow
    skips only the impls whose framework raises, aborts or computes wrong there."""

    cells: list[Cell]
    verdicts: dict[tuple[str, str, int, str], dict[str, Any]]

    def preflight(self, cell: Cell) -> dict[str, Any]:
        return self.verdicts[_verdict_key(cell)]

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if not self.preflight(c).get("skip")]


def _verdict_key(cell: Cell) -> tuple[str, str, int, str]:
    return cell.impl, cell.spec.name, cell.batch, cell.precision


def matrix_precisions(device: str, asked: list[str] | None) -> list[str]:
    """A matrix's precisions: fp32 always (every other precision's speed-up and curves are read against it), then
    what was asked for; by default a GPU adds bf16 (few train a model of this size in pure float32 on one) and a
    CPU adds none. tf32 is on request only."""
    wanted = asked if asked is not None else (["bf16"] if device == "gpu" else [])
    return ["fp32"] + [p for p in wanted if p != "fp32"]


def matrix_cells(plan: MatrixPlan, kmer: int, steps: int, repeats: int, timeout_s: float,
                 precisions: list[str] | None = None, device_memory: int | None = None,
                 results_dir: str | None = None) -> MatrixCells:
    """Every cell of ``plan`` in each of ``precisions`` (default fp32), preflighted once per (impl, spec, batch,
    precision).

    Presets too slow for this device become one skipped row per impl, with preflight's memory
    reason where it has one, else the time reason. Under a budget, a cell's timeout is cut to
    eight times its share (at least three minutes), so one hung cell cannot eat the matrix.
    """
    cells: list[Cell] = []
    for spec, batches in plan.specs:
        variants = [spec.with_settings(precision=p, tf32=p == "tf32") for p in precisions or ["fp32"]]
        cells += plan_cells(plan.impls, variants, kmer, batches, repeats, steps=steps, timeout_s=timeout_s)
    verdicts: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for spec, reason in plan.too_slow:
        batch = CPU_BATCHES.get(spec.name, [8])[0]
        slow = plan_cells(plan.impls, [spec], kmer, [batch], 1, steps=steps, timeout_s=timeout_s)
        for c in slow:
            verdict = preflight_cell(c, device_memory=device_memory, device=plan.device, results_dir=results_dir)
            verdicts[_verdict_key(c)] = verdict if verdict.get("skip") else {**verdict, "skip": True, "reason": reason}
        cells += slow
    for c in cells:
        if _verdict_key(c) not in verdicts:
            verdicts[_verdict_key(c)] = preflight_cell(c, device_memory=device_memory, device=plan.device,
                                                       results_dir=results_dir)
    out = MatrixCells(cells, verdicts)
    if plan.budget_s:
        share = 8 * plan.budget_s / max(1, len(out.runnable))
        for c in cells:
            c.timeout_s = min(c.timeout_s, max(180.0, share))
    return out
