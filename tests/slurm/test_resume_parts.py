"""A Slurm run's part files are rows: ``--resume`` merges what a died submitting process left, with either launcher,
before it decides what to run (so a cell whose job finished is not run again)."""

from __future__ import annotations

from fixtures.paths import REPO

from bench.cli import main
from harness.run.runner import plan_cells
from harness.run.slurm.parts import part_path, write_part
from harness.spec.presets import resolve_spec
from harness.store import ResultStore

NUMPY = f"{REPO}/tests/fixtures/planted.py:NumpyVAE"


def test_a_local_resume_merges_the_parts_a_slurm_run_left_and_runs_nothing_twice(tmp_path, capsys):
    cell = plan_cells([NUMPY], [resolve_spec("dense", kmer=3)], 3, [16], steps=3)[0]
    row = {"cell_key": cell.key, "impl": NUMPY, "spec_name": "dense", "spec_hash": cell.spec.hash, "kmer": 3,
           "batch": 16, "repeat": 0, "steps": 3, "status": "ok", "failure_kind": "ok", "launcher": "slurm",
           "job_id": "9_0", "array_job_id": "9", "array_task_id": 0, "node": "n1",
           "started_at": "2026-12-07T20:00:00+0000"}
    write_part(part_path(tmp_path, "r", cell.key), row)
    code = main(["run", "--impl", NUMPY, "--spec", "dense", "--kmer", "3", "--batch", "16", "--steps", "3",
                 "--results", str(tmp_path), "--run-id", "r", "--resume", "--no-progress", "--no-peak", "--json"])
    assert code == 0, capsys.readouterr().err
    rows = ResultStore(tmp_path, "r").rows()
    assert [(r.identity.cell_key, r.placement.job_id) for r in rows] == [(cell.key, "9_0")]
    assert not part_path(tmp_path, "r", cell.key).exists()
