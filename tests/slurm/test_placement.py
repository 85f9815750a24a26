"""Where a row ran (``harness.placement``): read from Slurm's job variables on the node, stored flat, typed on load."""

from __future__ import annotations

from harness.row import parse_row
from harness.run.slurm.node import slurm_placement


def test_an_array_task_is_named_as_squeue_names_it():
    env = {"SLURM_JOB_ID": "481650", "SLURM_ARRAY_JOB_ID": "481647", "SLURM_ARRAY_TASK_ID": "3",
           "SLURMD_NODENAME": "gpu07"}
    assert slurm_placement(env) == {"launcher": "slurm", "node": "gpu07", "job_id": "481647_3",
                                    "array_job_id": "481647", "array_task_id": 3}
    plain = slurm_placement({"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "n1"})
    assert plain["job_id"] == "12" and plain["array_task_id"] is None


def test_placement_is_a_typed_part_and_round_trips():
    line = {"schema_version": 2, "cell_key": "k", "impl": "torch", "batch": 16, "repeat": 0, "status": "failed",
            "precision": "fp32", "launcher": "slurm", "node": "gpu07", "job_id": "481647_3", "array_job_id": "481647",
            "array_task_id": 3, "slurm_state": "TIMEOUT", "slurm_log": "/shared/r/slurm/x/481647_3_0_log.out"}
    row = parse_row(line)
    assert row.identity.launcher == "slurm" and row.placement.array_task_id == 3
    assert row.placement.slurm_state == "TIMEOUT" and "job_id" not in row.rest
    assert row.to_dict() == line
    local = parse_row({"schema_version": 2, "cell_key": "k", "impl": "torch", "status": "ok"})
    assert local.identity.launcher == "local" and local.placement.job_id is None


def test_device_model_names_the_gpu_and_driver_or_the_cpu():
    from harness.placement import device_model

    h100 = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54"}] * 2, "cpu_model": "Xeon"}
    assert device_model(h100) == "NVIDIA H100 80GB HBM3 (driver 550.54)"
    assert device_model({"gpus": [], "cpu_model": "Intel Xeon", "cpu_cores_logical": 2}) == "CPU Intel Xeon (2 cores)"
    assert device_model(None) == "CPU unknown"


def test_compare_says_when_two_runs_differ_in_device(tmp_path, capsys):
    import json

    from bench.cli import main

    def run(name: str, gpu: str) -> None:
        row = {"schema_version": 2, "run_id": name, "cell_key": "k", "impl": "torch", "spec_hash": "h", "batch": 16,
               "repeat": 0, "status": "ok", "precision": "fp32", "step_stats": {"median_s": 0.01},
               "fingerprint": {"gpus": [{"name": gpu, "driver": "550"}]}}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")

    run("a", "NVIDIA H100")
    run("b", "NVIDIA A100")
    main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json"])
    err = capsys.readouterr().err
    assert "differ in device" in err and "NVIDIA H100 (driver 550)" in err and "NVIDIA A100" in err
    run("b", "NVIDIA H100")
    main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json"])
    assert "differ in device" not in capsys.readouterr().err
