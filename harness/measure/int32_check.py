"""Does an op give the right answer on a tensor past 2^31 elements? (the worker's side of probe-int32)

A wrapped 32-bit index shows in one of three ways: the kernel refuses (an
exception), the process aborts, or the kernel runs and the elements past the
boundary come out wrong. The last needs a reference that cannot itself be
wrong, so each probe compares the whole-tensor result with the same op on
chunks of rows that stay far below the boundary:

* row-wise outputs (the op's output and the input gradient): the rows from
  the one that straddles the boundary to the end, computed alone;
* summed outputs (weight gradients, the loss): the whole-tensor value against
  the sum over two chunks.

The backward pass uses the output itself as the cotangent (the gradient of
half the sum of squares), so every input row's gradient depends on its own
output row and no extra tensor of the full size is needed.

This module is framework-free: the framework code (``impls/int32_probe_*.py``,
or a test's numpy stand-in) supplies an ``Ops`` object with ``input(geometry)``,
``build(op, geometry)`` (a function ``(x, backward) -> {name: array}``),
``rows(array, start, stop)``, ``host(array) -> numpy`` and ``environment()``.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: every op kind of the spec language a probe covers (the activations each on its own)
OPS = ("dense", "conv1d", "conv_transpose1d", "max_pool1d", "upsample1d", "batch_norm",
       "relu", "leaky_relu", "gelu", "sigmoid", "loss")
PASSES = ("forward", "forward+backward")
SIZES = ("below", "past")
#: test-only: a lower boundary, so a probe of the machinery runs in milliseconds on a CPU
BOUNDARY_ENV = "VAEBENCH_INT32_BOUNDARY"
#: relative difference above which a result is wrong (cuDNN picks other algorithms for other
#: batch sizes: float32 differences of 1e-6; a wrapped index gives zeros or another row's data)
TOLERANCE = 1e-3


def boundary() -> int:
    raw = os.environ.get(BOUNDARY_ENV)
    return int(raw) if raw else 2**31


@dataclass(frozen=True)
class Geometry:
    """One probe's shapes: ``rows`` samples of ``length`` x ``channels``; the op's largest
    tensor (output, or input for a max-pool) has ``per_row`` = length x channels elements a row."""

    op: str
    size: str
    rows: int
    length: int
    channels: int
    boundary: int
    #: dense: its input width (the output is the large tensor)
    features: int = 64

    @property
    def per_row(self) -> int:
        return self.length * self.channels

    @property
    def elements(self) -> int:
        return self.rows * self.per_row

    @property
    def check_from(self) -> int:
        """The first row compared: the one that holds element ``boundary - 1`` (at least two rows)."""
        return max(0, min(self.boundary // self.per_row - 1, self.rows - 2))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "elements": self.elements, "check_from": self.check_from}


def geometry(op: str, size: str, limit: int | None = None) -> Geometry:
    """Shapes for a probe just past (``size="past"``) or just below the boundary: 64 channels of
    length 8,192 (conv-final's first conv output) at 2^31; fewer and shorter for a test's boundary."""
    limit = limit or boundary()
    channels = 64 if limit >= 2**26 else 8
    length = max(16, min(8192, (limit // (channels * 64)) // 16 * 16))
    per_row = length * channels
    rows = limit // per_row + 1 if size == "past" else (limit - 1) // per_row
    return Geometry(op, size, max(rows, 2), length, channels, limit)


def probe_bytes(g: Geometry, backward: bool) -> int:
    """Host or device memory a probe holds at once: input, output, their gradients and a chunk."""
    return g.elements * 4 * (6 if backward else 3)


def load_ops_module(module: str):
    """A dotted module (``impls.int32_probe_torch``) or a file (``tests/fixtures/planted_int32.py``)."""
    if module.endswith(".py"):
        from harness.adapter import import_file

        return import_file(Path(module), "vaebench_probe_")
    return importlib.import_module(module)


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return math.inf
    finite = np.isfinite(b)
    if not finite.any():
        return 0.0
    scale = max(1.0, float(np.abs(b[finite]).max()))
    return float(np.abs(a[finite] - b[finite]).max()) / scale if a.size else 0.0


def check(ops: Any, g: Geometry, backward: bool) -> dict[str, Any]:
    """Run the op on all rows and on chunks; ``ok`` or ``wrong`` with the largest relative difference."""
    fn = ops.build(g.op, g)
    x = ops.input(g)
    r0 = g.check_from
    t0 = time.perf_counter()
    full = fn(x, backward)
    run_s = time.perf_counter() - t0
    row_wise = {k for k in full if k in ("y", "dx")}
    summed = set(full) - row_wise
    want_rows = {k: ops.host(ops.rows(full[k], r0, g.rows)) for k in row_wise}
    want_sums = {k: ops.host(full[k]) for k in summed}
    del full
    tail = fn(ops.rows(x, r0, g.rows), backward)
    diffs = {k: _rel_diff(want_rows[k], ops.host(tail[k])) for k in row_wise}
    if summed:
        tail_sums = {k: ops.host(tail[k]) for k in summed}
        del tail
        head = fn(ops.rows(x, 0, r0), backward)
        for k in summed:
            diffs[k] = _rel_diff(want_sums[k], ops.host(head[k]) + tail_sums[k])
    worst = max(diffs, key=lambda k: diffs[k])
    behaviour = "wrong" if diffs[worst] > TOLERANCE else "ok"
    detail = f"{worst} differs past the boundary by {diffs[worst]:.3g} (relative)" if behaviour == "wrong" else ""
    return {"behaviour": behaviour, "max_rel_diff": {k: (v if math.isfinite(v) else "inf") for k, v in diffs.items()},
            "detail": detail, "run_s": round(run_s, 4)}


def run_probes(module: str, impl: str, device: str, probes: list[dict[str, Any]], emit) -> list[dict[str, Any]]:
    """In the worker: each probe (``op``, ``pass``, ``size``) in turn; an exception is that probe's
    ``raises`` and the next one runs. ``emit`` announces each start and result, so the parent knows
    which probe an abort killed."""
    mod = load_ops_module(module)
    ops = mod.Ops(device=device, impl=impl)
    emit(environment=ops.environment())
    results = []
    for i, p in enumerate(probes):
        g = geometry(p["op"], p["size"])
        emit(probe_start=i)
        try:
            res = check(ops, g, p["pass"] == "forward+backward")
        except Exception as exc:  # noqa: BLE001 - a framework's refusal is the finding
            res = {"behaviour": "raises", "error_type": type(exc).__name__,
                   "detail": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:400]}"}
        res = {**p, "geometry": g.to_dict(), **res}
        results.append(res)
        emit(probe_done=i, result=res)
        if hasattr(ops, "release"):
            ops.release()
    return results
