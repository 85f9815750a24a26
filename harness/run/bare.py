"""The bare loop: the cell's train step with nothing around it, for ``python -m bench overhead``.

It runs in a worker like a cell, with the same compile and warm-up steps and the
same timing windows (``harness.run.schedule``), but without any probe, so the
ratio of the two step times is what the harness adds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from harness.adapter import load_adapter_class
from harness.data import make_source
from harness.run.schedule import steps_per_window, warmup_steps
from harness.run.task import BareTask
from harness.spec.reference import init_weights
from harness.spec.schema import VAESpec


def bare_loop(task: BareTask) -> dict[str, Any]:
    """Worker side: the same windows as the harness, without any probe."""
    spec = VAESpec.from_dict(task.spec)
    model = load_adapter_class(task.impl).with_weights(spec, init_weights(spec))
    source = make_source(task.kmer, task.batch, seed=spec.settings.seed, width=spec.input_length)
    steps, spw = task.steps, steps_per_window(task.steps)
    for _ in range(1 + warmup_steps(steps)):  # the harness's compile and warm-up steps
        model.loss_value(model.train_step(source.next()))
    model.synchronize()
    per_step = []
    done = 0
    while done < steps:
        xs = [source.next() for _ in range(spw)]
        t = time.perf_counter()
        for x in xs:
            handle = model.train_step(x)
        model.synchronize()
        per_step.append((time.perf_counter() - t) / spw)
        done += spw
        model.loss_value(handle)
    return {"median_s": float(np.median(per_step)), "window_times_s": per_step}
