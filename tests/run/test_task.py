"""The typed task between parent and worker: what the parent writes is what the worker reads."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from harness.run.runner import TASK_OPTIONS, Cell
from harness.run.task import BareTask, CellTask, ParamsTask, task_from_json
from harness.spec.presets import resolve_spec
from harness.store import cell_key


def test_cell_task_round_trips_through_json():
    spec = resolve_spec("dense", kmer=3)
    task = Cell("torch", spec, 3, 16, steps=20, warmup_steps=1, sweep=True).task()
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


def test_a_cell_option_that_is_not_a_task_field_fails_in_the_parent():
    spec = resolve_spec("dense", kmer=3)
    with pytest.raises(TypeError):
        Cell("torch", spec, 3, 16, no_such_field=1)
    task_fields = {f.name for f in fields(CellTask)}
    assert set(TASK_OPTIONS) <= task_fields, set(TASK_OPTIONS) - task_fields


def test_cell_keys_are_those_of_runs_written_before_the_options_were_fields():
    """``--resume`` of a run stored before schema 2 must find its cells: the key is the hash of the
    same payload the old ``Cell.extra`` made, an option joining it only when set."""
    spec = resolve_spec("dense", kmer=3)
    base = {"scenario": None, "leak": 0, "data": None, "columns": None}
    plain = Cell("torch", spec, 3, 16, steps=20)
    assert plain.key == cell_key("torch", spec.hash, 16, 0, 20, base)
    probe = Cell("torch", spec, 3, 16, steps=20, warmup_steps=1, steps_per_window=1, shared_init=False, sweep=True)
    assert probe.key == cell_key("torch", spec.hash, 16, 0, 20, {**base, "warmup_steps": 1, "steps_per_window": 1,
                                                                   "shared_init": False, "sweep": True})
    assert probe.key != plain.key
    assert Cell("torch", spec, 3, 16, steps=20, precision="bf16").key != plain.key
