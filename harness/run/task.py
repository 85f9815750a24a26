"""The protocol between the parent and a worker: one typed task per worker process.

The parent builds a task, ``harness.run.launch`` writes it as JSON beside the
worker and fills in where the worker leaves its result; the worker reads it
back with :func:`task_from_json`. Both sides import this module, so a field
the parent sets is a field the worker knows: an unknown key is an error, not
a silently ignored ``dict.get``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


@dataclass(kw_only=True)
class Task:
    """Fields every task has; ``impl``, ``result_path`` and ``scratch`` are set by the launcher."""

    kind: ClassVar[str]
    impl: str = ""
    result_path: str = ""
    #: a temporary directory that lives as long as the worker
    scratch: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(kw_only=True)
class BareTask(Task):
    """The bare loop the overhead benchmark compares the cell against (``harness.run.bare``)."""

    kind: ClassVar[str] = "bare"
    spec: dict[str, Any]
    kmer: int | None
    batch: int
    steps: int


@dataclass(kw_only=True)
class CellTask(BareTask):
    """Measure one cell (``harness.run.cell.run_cell``): the bare loop's steps, and everything around them."""

    kind: ClassVar[str] = "cell"
    scenario: str | None = None
    inject_leak_bytes: int = 0
    data: str | None = None
    columns: str | None = None
    #: tracemalloc phase after the timing: "auto", "on" or "off"
    heap: str = "auto"
    #: seconds this cell may spend; shortens the steady phase, never compile or warm-up
    time_budget_s: float | None = None
    #: overrides of the schedule in ``harness.run.schedule`` (the sweep's short probes set them)
    warmup_steps: int | None = None
    steps_per_window: int | None = None
    heap_steps: int | None = None
    #: load the shared canonical initial weights (parity of starting points); a sweep probe skips it
    shared_init: bool = True
    #: train a tiny model of the adapter first, to measure the runtime's footprint (harness.run.phases.footprint)
    warm_runtime: bool = True
    #: a max-batch sweep probe (part of the cell's identity, so a probe never resumes a matrix cell)
    sweep: bool = False
    #: the adapter's training loop to time (``VAEAdapter.loops``; Keras: "fit" or "train_on_batch");
    #: None takes the build's default, the loop its users write
    loop: str | None = None
    #: the leak confirmation phase (``harness.run.confirm``): "auto" (when the steady verdict is pending),
    #: "on" (always) or "off"; its steps and time cap override ``harness.diagnose.evidence``'s defaults
    confirm: str = "auto"
    confirm_steps: int | None = None
    confirm_max_s: float | None = None
    #: the leak phase's steps (``harness.run.phases.leak``): None sizes it to its threshold, a number fixes it
    leak_steps: int | None = None
    #: seconds after which the parent kills the worker (the cell's timeout); the untimed phases stop short of
    #: it (``CellContext.near_deadline``), so a slow cell ends with a row, not a timeout
    deadline_s: float | None = None


@dataclass(kw_only=True)
class BaselineTask(Task):
    """A textbook training loop that the cell's step time is checked against (``python -m bench baseline``).

    ``module`` names the baseline by import path (e.g. ``bench.baselines.torch_loop``); the worker
    imports it by that string and calls its ``run(spec, kmer, batch, steps, warmup, steps_per_window)``,
    so the harness never imports ``bench`` itself.
    """

    kind: ClassVar[str] = "baseline"
    module: str
    spec: dict[str, Any]
    kmer: int | None
    batch: int
    steps: int
    #: steps before the clock (the cell's compile and warm-up steps); None: the baseline's own rule
    warmup: int | None = None
    steps_per_window: int | None = None


@dataclass(kw_only=True)
class ParamsTask(Task):
    """Read parameter counts off the framework's own model for each spec."""

    kind: ClassVar[str] = "params"
    specs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class ParityTask(Task):
    """Load shared weights, record forward, loss, gradients and one step for each item."""

    kind: ClassVar[str] = "parity"
    #: each item: ``spec`` (dict), ``inputs_path`` and ``outputs_path`` (npz files)
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class CurveTrainingTask(Task):
    """What every worker that trains on a curve's path is given (``CurvesTask``, ``ToTargetTask``)."""

    kind: ClassVar[str] = "curve-training"
    spec: dict[str, Any] = field(default_factory=dict)
    #: npz: ``w:NAME`` weights, ``x_eval``, ``eps_eval``, optional ``mask_eval``, and for scaled rows ``lo`` and ``span``
    inputs_path: str = ""
    #: the most steps it trains
    steps: int = 0
    #: the held-out reconstruction is read before each of the first ``every`` steps, then every ``every`` steps
    every: int = 1
    #: the training rows (``harness.run.curve_data.CurveData``): a .npy file, its columns, how many rows train
    data_path: str = ""
    columns: str | None = None
    train_rows: int = 0
    batch: int = 0


@dataclass(kw_only=True)
class CurvesTask(CurveTrainingTask):
    """Train ``steps`` steps from shared weights on shared batches and noise, recording the curves
    (``harness.run.curves``)."""

    kind: ClassVar[str] = "curves"
    outputs_path: str = ""
    #: stop after the first probe whose held-out reconstruction is at or below this (steps to a target)
    stop_at_recon: float | None = None


@dataclass(kw_only=True)
class ToTargetTask(CurveTrainingTask):
    """Train from the curve's weights, batches and noise until the held-out reconstruction meets ``target_recon``,
    timing the steps (``harness.run.to_target``)."""

    kind: ClassVar[str] = "to-target"
    target_recon: float = 0.0


@dataclass(kw_only=True)
class PeakTask(Task):
    """Time a square matmul in the cells' precision on their device: the MFU denominator (``harness.measure.peak``)."""

    kind: ClassVar[str] = "peak"
    #: the product's size n (n x n times n x n); None: 8192 on a GPU, 2048 or less on a CPU
    size: int | None = None
    #: timed products (after warm-up); None: 10 on a GPU, 5 on a CPU
    repeats: int | None = None
    #: the run allows TF32: measure with it on, and off as well
    tf32: bool = False
    #: "gpu", "cpu" or "auto" (a GPU when the framework sees one, as the cells do)
    device: str = "auto"
    #: the framework whose matmul to time ("torch", "jax", "tensorflow"); None: the first one installed
    framework: str | None = None
    #: the operands' dtype: "float32", or "bfloat16" for bf16 cells (``harness.measure.peak.peak_dtype``)
    dtype: str = "float32"


@dataclass(kw_only=True)
class Int32ProbeTask(Task):
    """Run ops past 2^31 elements (``harness.measure.int32_check``): one op's probes per worker."""

    kind: ClassVar[str] = "int32-probe"
    #: the framework code: a module name (``impls.int32_probe_torch``) or a .py file
    module: str
    #: "gpu" or "cpu"
    device: str
    #: each probe: ``op``, ``pass`` ("forward" or "forward+backward") and ``size`` ("below" or "past")
    probes: list[dict[str, Any]] = field(default_factory=list)


TASK_KINDS: dict[str, type[Task]] = {t.kind: t for t in (CellTask, BareTask, BaselineTask, ParamsTask, ParityTask,
                                                         CurvesTask, ToTargetTask, PeakTask, Int32ProbeTask)}


def task_from_json(data: dict[str, Any]) -> Task:
    """The task a parent wrote; raises ``ValueError`` naming an unknown kind or field."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; kinds are {', '.join(TASK_KINDS)}")
    cls = TASK_KINDS[kind]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{kind} task has unknown field(s) {', '.join(unknown)}")
    return cls(**data)
