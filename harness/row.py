"""The stored result of one cell, typed: the one place that says what a row holds.

A row is written as one JSON line (``harness.store``) and read back through
:func:`parse_row`, the one loader: the report, ``compare``, ``--resume`` and
``fit-memory`` all read :class:`Row` objects, never the raw line.

Why a tree of dataclasses and not a dict: before schema 2 the row was built
in two places and read in four, each with its own ``row.get("...")`` and its
own idea of which keys a failed row lacks. Here each part of a row is one
dataclass with its fields named and typed, and the loader is the only code
that knows how old rows looked:

* :class:`Identity`  - what was measured (impl, spec, k, batch, repeat, precision, launcher);
* :class:`Outcome`   - ok, failed or skipped, and why; wall time;
* :class:`Timing`    - step and device-step statistics, warm-up, budget;
* :class:`Compile`   - compile time, cache hit, the compile counters;
* :class:`Memory`, :class:`Host`, :class:`Leak` - device memory, host RSS per batch, the leak verdict;
* :class:`Flops`     - FLOPs of a step, the achieved rates and MFU;
* :class:`Energy`    - joules per step, or why there is no figure;
* :class:`~harness.placement.Placement` - where the worker ran: node, Slurm job and array task, Slurm's state;
* ``fingerprint``, ``settings``, ``preflight``: the machine and the pinned settings, kept as mappings
  (their keys are the machine's, not ours to fix).

The JSON line stays flat, as in schema 1 (one key per figure, pandas-friendly,
``step_stats.median_s`` after ``json_normalize``); the tree is how code reads
it. Nothing is lost: a key no dataclass names is kept in its part's ``rest``
and written back (``Row.to_dict(parse_row(d)) == upgraded d``, tested on the
committed references).

Schema 1 rows (before precision and energy existed) are upgraded on load: they
trained in float32 (``precision`` "fp32", or "tf32" where ``settings.tf32``
was on), ran on the local launcher, and measured no energy (``energy`` says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from harness.placement import Placement
from harness.row_part import _Part
from harness.spec.schema import PRECISIONS  # the spec's precisions are the ones a row can record

SCHEMA_VERSION = 2
DEFAULT_PRECISION = "fp32"
#: where the cell's worker ran: "local" (a subprocess of the runner) or "slurm" (``harness.run.slurm``)
DEFAULT_LAUNCHER = "local"
STATUSES = ("ok", "failed", "skipped")


class RowError(ValueError):
    """A stored row cannot be read; the message is one line naming the field and the file's fix."""


# ------------------------------------------------------------------ the parts


@dataclass
class Identity(_Part):
    """What was measured. ``cell_key`` is the hash ``--resume`` matches on (``harness.store.cell_key``)."""

    run_id: str | None = None
    cell_key: str | None = None
    impl: str | None = None
    row: str | None = None
    spec_name: str | None = None
    spec_hash: str | None = None
    kmer: int | None = None
    input_length: int | None = None
    batch: int | None = None
    repeat: int | None = None
    steps: int | None = None
    scenario: str | None = None
    inject_leak_bytes: int | None = None
    data: str | None = None
    columns: str | None = None
    precision: str = DEFAULT_PRECISION
    launcher: str = DEFAULT_LAUNCHER
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)

    @property
    def label(self) -> str:
        """The impl's row name in every table (``row`` for a plug-in that names itself)."""
        return self.row or self.impl or "?"


@dataclass
class Outcome(_Part):
    """Whether the cell measured anything, and if not, why (``harness.diagnose.failures``)."""

    status: str | None = None
    failure_kind: str | None = None
    failure_message: str | None = None
    failure_phase: str | None = None
    returncode: int | None = None
    stderr_tail: list | None = None
    wall_s: float | None = None
    wall_breakdown: dict | None = None
    started_at: str | None = None
    finished_at: str | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class StepStats(_Part):
    """Per-step statistics of the timed windows (``harness.measure.stats.summarize_steps``)."""

    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    iqr_s: float | None = None
    p95_s: float | None = None
    mean_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    stdev_s: float | None = None
    cv: float | None = None
    ci95_low_s: float | None = None
    ci95_high_s: float | None = None
    samples_per_s: float | None = None
    n_windows: int | None = None
    steps_per_window: int | None = None
    window_times_s: list | None = None
    feed_fallbacks: int | None = None
    rest: dict = field(default_factory=dict)
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Timing(_Part):
    """The steady phase (``step``, the headline) and the device-staged one (``device_step``)."""

    step_stats: StepStats | None = None
    device_step_stats: StepStats | None = None
    device_step_source: str | None = None
    input_bound_ratio: float | None = None
    import_s: float | None = None
    build_s: float | None = None
    warmup_step_times_s: list | None = None
    steady_windows_dropped: int | None = None
    steps_measured: int | None = None
    steps_requested: int | None = None
    time_budget_s: float | None = None
    train_loop: str | None = None
    loop_details: dict | None = None
    stages_input: bool | None = None
    syncs_every_step: bool | None = None
    final_loss: float | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def take(cls, d: Mapping[str, Any], keep_rest: bool = False):
        obj = super().take(d, keep_rest=False)
        for name in ("step_stats", "device_step_stats"):
            if isinstance(getattr(obj, name), Mapping):
                setattr(obj, name, StepStats.take(getattr(obj, name)))
        return obj

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        for name in ("step_stats", "device_step_stats"):
            if isinstance(out.get(name), StepStats):
                out[name] = out[name].dump()
        return out

    @property
    def step(self) -> StepStats | None:
        return self.step_stats

    @property
    def device_step(self) -> StepStats | None:
        return self.device_step_stats


@dataclass
class Compile(_Part):
    """The first step, timed alone, and whether JAX loaded it from the compilation cache."""

    compile_s: float | None = None
    compile_cached: bool | None = None
    counters: dict | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Memory(_Part):
    """Peak device memory, or its CPU stand-in (``harness.measure.host_peak``)."""

    peak_bytes: int | None = None
    device: dict | None = None
    device_source: str | None = None
    nvml_bytes: int | None = None
    peak_rss_bytes: int | None = None
    training_peak_rss_bytes: int | None = None
    compile_peak_rss_bytes: int | None = None
    import_anon_bytes: int | None = None
    cpu_standin: str | None = None
    rest: dict = field(default_factory=dict)
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Host(_Part):
    """Host RSS after every step, and the Python heap of the untimed heap phase."""

    rss_anon: list | None = None
    rss_file: list | None = None
    steady_from: int | None = None
    anon_growth_bytes: int | None = None
    file_growth_bytes: int | None = None
    heap_bytes: list | None = None
    heap_growth_bytes: int | None = None
    rest: dict = field(default_factory=dict)
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Leak(_Part):
    """The leak verdict on all the evidence (``harness.diagnose.evidence``) and its confirmation."""

    verdict: str | None = None
    label: str | None = None
    confirmed: bool | None = None
    slope_bytes_per_batch: float | None = None
    slope_ci_low: float | None = None
    slope_ci_high: float | None = None
    threshold_bytes_per_batch: float | None = None
    #: the power of the series that decided (``harness.diagnose.leak``): the largest leak a batch it cannot
    #: rule out, the smallest it flags with 80% power, and its judged length; absent in rows before issue 25
    bound_bytes_per_batch: float | None = None
    detectable_bytes_per_batch: float | None = None
    judged_steps: int | None = None
    #: the leak phase that took the series (``harness.run.phases.leak``): steps, ring bytes, why it stopped
    phase: dict | None = None
    decided_by: str | None = None
    evidence: list | None = None
    cause: dict | None = None
    confirmation: dict | None = None
    rest: dict = field(default_factory=dict)
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Flops(_Part):
    """FLOPs of one step from the spec, the rates achieved, and MFU over the run's matmul peak."""

    RENAMED: ClassVar[dict[str, str]] = {"counts": "flops"}

    #: FLOPs of one step by part (stored as ``flops``: per_step, matmul_per_step, forward, ...)
    counts: dict | None = None
    tflops: dict | None = None
    mfu: dict | None = None
    matmul_peak_tflops: float | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)

    @property
    def mfu_step(self) -> float | None:
        return (self.mfu or {}).get("step")


@dataclass
class Energy(_Part):
    """Energy over the steady phase (``harness.measure.energy``), or the reason there is none."""

    source: str | None = None
    joules: float | None = None
    joules_per_step: float | None = None
    samples_per_joule: float | None = None
    steps: int | None = None
    absent_reason: str | None = None
    rest: dict = field(default_factory=dict)
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


@dataclass
class Build(_Part):
    """What the worker ran: its framework versions, device, and the model's parameter counts."""

    versions: dict | None = None
    device_kind: str | None = None
    frameworks_loaded: list | None = None
    pid: int | None = None
    param_counts: dict | None = None
    param_counts_expected: dict | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


#: parts stored flat at the top of the line, in the order they are read
_FLAT_PARTS: tuple[tuple[str, type[_Part]], ...] = (
    ("identity", Identity), ("outcome", Outcome), ("timing", Timing), ("compile", Compile),
    ("flops", Flops), ("build", Build), ("placement", Placement))
#: parts stored under one key of the line
_NESTED_PARTS: tuple[tuple[str, type[_Part]], ...] = (
    ("memory", Memory), ("host", Host), ("leak", Leak), ("energy", Energy))


@dataclass
class Row(Mapping):
    """One cell's stored result. Read its parts by attribute (``row.timing.step_stats.median_s``).

    It is also a read-only mapping of the flat stored line (``row["status"]``), so tools that
    take JSON (pandas' ``json_normalize``, ``json.dumps(row.to_dict())``) see what is on disk."""

    identity: Identity
    outcome: Outcome
    timing: Timing
    compile: Compile
    flops: Flops
    build: Build
    placement: Placement = field(default_factory=Placement)
    memory: Memory | None = None
    host: Host | None = None
    leak: Leak | None = None
    energy: Energy | None = None
    fingerprint: dict | None = None
    settings: dict | None = None
    preflight: dict | None = None
    #: every other top-level key (``scenario_info``, ``sweep``, ``counters``...), kept as written
    rest: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: the schema the line was written in, where the loader upgraded it
    upgraded_from: int | None = None
    _flat: dict | None = field(default=None, repr=False, compare=False)

    # -------------------------------------------------------------- shortcuts every reader wants

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def status(self) -> str | None:
        return self.outcome.status

    @property
    def impl(self) -> str | None:
        return self.identity.impl

    @property
    def label(self) -> str:
        return self.identity.label

    @property
    def is_probe(self) -> bool:
        """A scenario or a max-batch sweep probe: diagnosis rows, not matrix cells."""
        return bool(self.identity.scenario) or bool(self.rest.get("sweep"))

    @property
    def median_step_s(self) -> float | None:
        s = self.timing.step_stats
        return s.median_s if s is not None else None

    # -------------------------------------------------------------- the stored line

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON line: what :meth:`harness.store.ResultStore.append` writes."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        if self.upgraded_from is not None:
            out["upgraded_from"] = self.upgraded_from
        for name, _ in _FLAT_PARTS:
            out.update(getattr(self, name).dump())
        for name, _ in _NESTED_PARTS:
            part = getattr(self, name)
            if part is not None:
                out[name] = part.dump()
        for name in ("fingerprint", "settings", "preflight"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update(self.rest)
        return out

    def _view(self) -> dict[str, Any]:
        if self._flat is None:
            self._flat = self.to_dict()
        return self._flat

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())


def upgrade(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored line in today's schema: schema 1 rows gain ``precision``, ``launcher`` and ``energy``."""
    version = d.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise RowError(f"row has schema_version {version!r}; expected an integer from 1 to {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise RowError(f"row was written by a newer vaebench (schema {version}; this one reads up to "
                       f"{SCHEMA_VERSION}): upgrade vaebench to read it")
    out = dict(d)
    if version == 1:
        settings = d.get("settings") if isinstance(d.get("settings"), Mapping) else {}
        out["precision"] = "tf32" if settings.get("tf32") else DEFAULT_PRECISION
        out["launcher"] = DEFAULT_LAUNCHER
        if d.get("status") == "ok" and "energy" not in d:
            out["energy"] = {"source": None, "absent_reason": "the row was written by schema 1, before vaebench "
                             "measured energy"}
        out["upgraded_from"] = 1
        out["schema_version"] = SCHEMA_VERSION
    return out


def parse_row(d: Mapping[str, Any]) -> Row:
    """The one loader: a stored line (any schema this vaebench knows) as a :class:`Row`.

    Raises :class:`RowError` with one line naming the field when the line is not a row."""
    if isinstance(d, Row):
        return d
    if not isinstance(d, Mapping):
        raise RowError(f"a result row must be a JSON object, not {type(d).__name__}")
    flat = upgrade(d)
    _check_types(flat)
    taken: set[str] = {"schema_version", "upgraded_from", "fingerprint", "settings", "preflight"}
    parts: dict[str, Any] = {}
    for name, cls in _FLAT_PARTS:
        part = cls.take(flat, keep_rest=False)
        parts[name] = part
        taken |= part.keys_taken()
    for name, cls in _NESTED_PARTS:
        taken.add(name)
        value = flat.get(name)
        if value is None and name not in flat:
            parts[name] = None
        elif isinstance(value, Mapping):
            parts[name] = cls.take(value)
        else:
            raise RowError(f"row field {name!r} must be an object, not {type(value).__name__}")
    rest = {k: v for k, v in flat.items() if k not in taken}
    for name in ("fingerprint", "settings"):
        if flat.get(name) is not None and not isinstance(flat[name], Mapping):
            raise RowError(f"row field {name!r} must be an object, not {type(flat[name]).__name__}")
    return Row(**parts, fingerprint=flat.get("fingerprint"), settings=flat.get("settings"),
               preflight=flat.get("preflight"), rest=rest, schema_version=SCHEMA_VERSION,
               upgraded_from=flat.get("upgraded_from"))


#: identity fields a row must have right, or every grouping of the report goes wrong
_TYPES: dict[str, tuple[type, ...]] = {
    "impl": (str,), "batch": (int,), "repeat": (int,), "kmer": (int, type(None)), "status": (str,),
    "precision": (str,), "launcher": (str,), "spec_hash": (str,), "cell_key": (str,),
}


def _check_types(flat: Mapping[str, Any]) -> None:
    for key, types in _TYPES.items():
        if key in flat and (not isinstance(flat[key], types) or isinstance(flat[key], bool)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RowError(f"row field {key!r} is {flat[key]!r}; expected {want}")
    if "status" in flat and flat["status"] not in STATUSES:
        raise RowError(f"row field 'status' is {flat['status']!r}; expected one of {', '.join(STATUSES)}")
    if flat.get("precision", DEFAULT_PRECISION) not in PRECISIONS:
        raise RowError(f"row field 'precision' is {flat['precision']!r}; expected one of {', '.join(PRECISIONS)}")
