"""Submission, the node's side and collection end to end, on submitit's debug executor (no cluster).

The debug executor runs each submitted callable in this process when its result is asked for, so this test runs
the real ``run_on_node`` (the same worker as the local launcher, a numpy-only plug-in: under a second) and the
real part files and merge; only ``sbatch`` is not there. It checks what the cluster tests cannot see cheaply: the
parameters each group is submitted with, one array per group, the job list ``--resume`` reads, and a row per cell.
"""

from __future__ import annotations

import pytest
from fixtures.paths import REPO

from harness.run.runner import plan_cells
from harness.run.slurm.collect import collect
from harness.run.slurm.node import NodeCell, row_base
from harness.run.slurm.params import SlurmOptions
from harness.run.slurm.parts import part_path
from harness.run.slurm.submit import recorded, slurm_dir, submit_cells
from harness.spec.presets import resolve_spec
from harness.store import ResultStore

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.worker

PLUGIN = f"{REPO}/tests/fixtures/planted.py:NumpyVAE"


class DebugSlurm(submitit.DebugExecutor):
    """submitit's debug executor taking SlurmExecutor's arguments; runs each job as soon as it is submitted."""

    calls: list[dict] = []

    def __init__(self, folder, max_num_timeout=0, python=None) -> None:  # noqa: ARG002
        super().__init__(folder)

    def update_parameters(self, **kwargs) -> None:
        DebugSlurm.calls.append(kwargs)

    def map_array(self, fn, *iterable):
        jobs = super().map_array(fn, *iterable)
        for job in jobs:
            job.result()
        return jobs


def test_cells_grouped_by_request_run_the_worker_and_land_once(tmp_path):
    store = ResultStore(tmp_path, "dbg")
    cells = plan_cells([PLUGIN], [resolve_spec("dense", kmer=3)], 3, [8, 16, 32], steps=3, timeout_s=60)
    small = {"estimate_bytes": 2**20}
    huge = {"estimate_bytes": 6 * 2**30}  # another request: another array
    verdicts = [small, small, huge]
    work = [(NodeCell(c, v, str(part_path(tmp_path, "dbg", c.key))), row_base(c, v))
            for c, v in zip(cells, verdicts, strict=True)]
    folder = slurm_dir(tmp_path, "dbg")
    DebugSlurm.calls = []
    jobs = submit_cells(work, folder, SlurmOptions(setup=("echo ready",)), "dbg", executor_cls=DebugSlurm)
    assert len(DebugSlurm.calls) == 2, "two requests, two arrays"
    mems = sorted(int(c["mem"][:-1]) for c in DebugSlurm.calls)
    assert mems[0] == 2304 and mems[1] > 10_000
    assert all(c["setup"][0] == "echo ready" and "PYTHONPATH" in c["setup"][-1] for c in DebugSlurm.calls)
    assert set(recorded(folder)) == {c.key for c in cells}
    with store.writing():
        rows = collect(store, jobs, store.append, died_wait_s=5, poll_s=0.1)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert {r["launcher"] for r in rows} == {"slurm"} and all(r["node"] for r in rows)
    assert sorted(r.identity.cell_key for r in store.rows()) == sorted(c.key for c in cells)
    assert not list((tmp_path / "parts" / "dbg").glob("*.json")), "every part was merged and removed"
