"""The launcher flags on the command line: a ``--slurm-*`` flag needs ``--launcher slurm``, and ``--launcher slurm``
needs submitit and sbatch here; each mistake is one line and exit 2, before anything is written or submitted."""

from __future__ import annotations

import pytest

from bench import slurm_args
from bench.cli import main
from bench.parser import build_parser

NUMPY = "tests/fixtures/planted.py:NumpyVAE"


def test_a_slurm_flag_without_the_slurm_launcher_is_exit_2(tmp_path, capsys):
    results = tmp_path / "r"
    code = main(["run", "--impl", NUMPY, "--kmer", "3", "--slurm-partition", "gpu", "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--slurm-partition only applies with --launcher slurm" in err[0]
    assert not results.exists(), "nothing was written"


def test_the_slurm_launcher_without_sbatch_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(slurm_args.shutil, "which", lambda name: None)
    code = main(["matrix", "--kmer", "3", "--impl", NUMPY, "--spec", "dense", "--launcher", "slurm",
                 "--results", str(tmp_path / "r")])
    assert code == 2 and "sbatch is not on PATH" in capsys.readouterr().err


def test_flags_become_slurm_options(monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm_args.shutil, "which", lambda name: f"/usr/bin/{name}")
    args = build_parser().parse_args(
        ["run", "--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-task", "1", "--slurm-time", "30",
         "--slurm-parallelism", "8", "--slurm-setup", "module load cuda", "--slurm-setup", "source env.sh",
         "--slurm-python", "/shared/venv/bin/python", "--slurm-mem", "6GiB", "--slurm-wait", "5"])
    opts = slurm_args.slurm_options(args)
    assert (opts.partition, opts.gpus_per_task, opts.time_min, opts.parallelism) == ("gpu", 1, 30, 8)
    assert opts.setup == ("module load cuda", "source env.sh") and opts.python == "/shared/venv/bin/python"
    assert opts.mem_bytes == 6 * 2**30 and opts.died_wait_s == 5
    assert slurm_args.slurm_options(build_parser().parse_args(["run"])) is None
