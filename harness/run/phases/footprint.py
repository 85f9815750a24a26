"""The footprints a cell's memory figures stand on, measured in each worker before the model is built.

Three RssAnon readings, taken in the ``build`` phase (``harness.run.phases.build``):

* **harness** (``harness_anon``): before the framework is imported, with the harness's own heavy
  modules already loaded. ``scipy.stats`` holds 45 MiB of anonymous pages once imported (measured
  on a 2-core AMD EPYC, 2026-12-07); the leak phase used to import it on first use, after the import
  footprint was read and before the memory phase, so every CPU training peak counted 45 MiB of the
  harness's statistics as the model's (stand-in method 2; method 3 imports it first).
* **import** (``import_anon``): after the framework's import, as before.
* **runtime** (``runtime_anon``): after :func:`warm_up_runtime` has trained a tiny model of the same
  adapter class, through the loop the cell times, and dropped it. Importing a framework does not start it: its thread
  pools, allocator arenas, compiler and autograd engine come up on the first training step. In the
  16 workers of each impl behind the CPU fits (``reports/reference/cpu/memory-k5``) the median was
  67.5 MiB in torch, 31 MiB in flax, 46 MiB in keras-jax and 1 MiB in keras-torch (whose import already
  starts torch). That is the framework's footprint before any model, and
  the memory estimate's constant (``harness.diagnose.memory``): measured in each worker, on this
  machine, never fitted.

The tiny model is the cell's spec with its layers replaced (8 inputs, a dense layer of 4 to 1,024 units, a
latent of 2), so it trains under the cell's own settings and optimizer; its own state is at most a few tens
of KiB. Its width is drawn from the worker's pid, so that its program is never in the run's compilation cache
(``harness.run.compile_cache``): a cached tiny program loads without starting XLA's compiler, and the first
flax cell of a run read a 33 MiB footprint where every later one, loading the same program, read 16 MiB;
the cell's own model compiles cold all the same, and the compiler it starts is the framework's, not the model's.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Any

import numpy as np

from harness.measure.probes import proc_status, release_free_heap
from harness.spec.layers import L
from harness.spec.schema import Loss, VAESpec

#: the tiny model's input length, and how many steps it trains
WARM_UP_INPUT = 8
WARM_UP_STEPS = 2


def import_harness_modules() -> int:
    """Load what the harness itself imports later in a cell, and return RssAnon after it."""
    from scipy import stats  # noqa: F401 - imported for its footprint, before the framework's

    release_free_heap()
    return int(proc_status().get("RssAnon", 0))


def warm_up_spec(spec: VAESpec) -> VAESpec:
    """The tiny model: ``spec``'s settings and optimizer around two dense layers, its width the worker's own."""
    return dataclasses.replace(
        spec, name="runtime-warm-up", input_length=WARM_UP_INPUT, latent_dim=2,
        encoder=(L("dense", units=4 + os.getpid() % 1021), L("relu")), decoder=(L("dense", units=WARM_UP_INPUT),),
        output_length_policy="exact", latent_heads=type(spec.latent_heads)(), loss=Loss())


def warm_up_runtime(cls: Any, spec: VAESpec, loop: str | None = None) -> tuple[int, float]:
    """Train a tiny model of adapter ``cls``: one step (its compile), then ``WARM_UP_STEPS`` through the training
    loop the cell times (Keras: ``fit`` over a ``PyDataset``, whose machinery a bare step never starts); drop it
    and trim the heap; return (RssAnon after, seconds it took)."""
    t0 = time.perf_counter()
    tiny = cls(warm_up_spec(spec))
    if loop:
        tiny.use_loop(loop)
    x = np.full((2, WARM_UP_INPUT), 1.0 / WARM_UP_INPUT, dtype=np.float32)
    tiny.train_step(x)
    tiny.train_steps(lambda: x, WARM_UP_STEPS, lambda i, handle: None)
    tiny.synchronize()
    del tiny
    gc.collect()
    release_free_heap()
    return int(proc_status().get("RssAnon", 0)), time.perf_counter() - t0
