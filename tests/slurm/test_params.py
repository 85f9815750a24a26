"""The sbatch parameters of a cell (``harness.run.slurm.params``), checked against the script submitit writes.

No Slurm needed: submitit's own ``_make_sbatch_string`` renders the parameters as its ``SlurmExecutor`` would
submit them, so a parameter submitit does not know, or writes otherwise, fails here rather than on a cluster.
"""

from __future__ import annotations

import pytest

from harness.run.slurm.params import (
    MEM_MARGIN,
    MEM_ROUND_MIB,
    RUNTIME_HOST_BYTES,
    SlurmOptions,
    cell_params,
    executor_params,
    group_key,
    mem_request_bytes,
    time_request_min,
)
from harness.run.slurm.submit import python_setup

submitit_slurm = pytest.importorskip("submitit.slurm.slurm")


def sbatch(params: dict, options: SlurmOptions, n: int = 4) -> str:
    full = executor_params(params, SlurmOptions(**{**options.__dict__, "setup": python_setup(options)}), "vb", n)
    return submitit_slurm._make_sbatch_string(command="python -m x", folder="/shared/f", map_count=n, **full)


def test_cpu_memory_is_runtime_plus_estimate_times_margin():
    estimate = 500 * 2**20
    assert mem_request_bytes(estimate, "cpu", SlurmOptions()) == int(RUNTIME_HOST_BYTES + MEM_MARGIN * estimate)
    # a GPU cell's estimate is device memory, which --mem does not cover
    assert mem_request_bytes(estimate, "gpu", SlurmOptions()) == RUNTIME_HOST_BYTES
    assert mem_request_bytes(estimate, "cpu", SlurmOptions(mem_bytes=3 * 2**30)) == 3 * 2**30


def test_requests_round_up_so_close_estimates_share_an_array():
    a = cell_params(100 * 2**20, 900, "cpu", SlurmOptions())
    b = cell_params(101 * 2**20, 900, "cpu", SlurmOptions())
    assert a["mem"] == b["mem"] and group_key(a) == group_key(b)
    assert int(a["mem"][:-1]) % MEM_ROUND_MIB == 0
    big = cell_params(8 * 2**30, 900, "cpu", SlurmOptions())
    assert group_key(big) != group_key(a)


def test_time_is_the_cell_timeout_plus_slack_or_the_flag():
    assert time_request_min(900, SlurmOptions()) == 17
    assert time_request_min(61, SlurmOptions()) == 4
    assert time_request_min(900, SlurmOptions(time_min=45)) == 45


def test_gpu_partition_setup_and_parallelism_reach_the_sbatch_script():
    options = SlurmOptions(partition="gpu", gpus_per_task=1, parallelism=2, setup=("module load cuda/12.4",))
    text = sbatch(cell_params(2**30, 600, "gpu", options), options)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --mem=2048M",
                 "#SBATCH --time=12", "#SBATCH --array=0-3%2", "#SBATCH --cpus-per-task=1", "module load cuda/12.4",
                 "#SBATCH --job-name=vb"):
        assert line in text, line
    # the repository reaches the node's PYTHONPATH after the user's setup lines
    assert text.index("module load cuda/12.4") < text.index("export PYTHONPATH=")


def test_cpu_cell_asks_no_gpu_and_no_partition():
    options = SlurmOptions()
    text = sbatch(cell_params(None, 120, "cpu", options), options, n=1)
    assert "--gpus-per-task" not in text and "--partition" not in text
    assert "#SBATCH --mem=2048M" in text
