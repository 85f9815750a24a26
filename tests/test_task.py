"""The typed task between parent and worker: what the parent writes is what the worker reads."""

from __future__ import annotations

import json

import pytest

from harness.run.runner import Cell
from harness.run.task import BareTask, CellTask, ParamsTask, task_from_json
from harness.spec.presets import resolve_spec


def test_cell_task_round_trips_through_json():
    spec = resolve_spec("dense", kmer=3)
    task = Cell("torch", spec, 3, 16, steps=20, extra={"warmup_steps": 1, "sweep": True}).task()
    back = task_from_json(json.loads(json.dumps(task.to_json())))
    assert isinstance(back, CellTask) and back == task
    assert back.warmup_steps == 1 and back.sweep and back.heap == "auto"


def test_each_kind_comes_back_as_its_own_type():
    assert type(task_from_json(BareTask(spec={}, kmer=3, batch=2, steps=4).to_json())) is BareTask
    assert type(task_from_json(ParamsTask(specs=[]).to_json())) is ParamsTask


def test_unknown_kind_or_field_is_an_error_not_ignored():
    with pytest.raises(ValueError, match="unknown task kind 'nope'"):
        task_from_json({"kind": "nope"})
    with pytest.raises(ValueError, match="unknown field.*warmup"):
        task_from_json({"kind": "cell", "spec": {}, "kmer": 3, "batch": 2, "steps": 4, "warmup": 3})


def test_a_cell_extra_that_is_not_a_task_field_fails_in_the_parent():
    spec = resolve_spec("dense", kmer=3)
    with pytest.raises(TypeError):
        Cell("torch", spec, 3, 16, extra={"no_such_field": 1}).task()
