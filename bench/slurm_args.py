"""The checks on the launcher flags (``--launcher local|slurm`` and ``--slurm-*``, defined in
``bench.parser.add_launcher_arguments``), and the ``SlurmOptions`` they make.

A module of its own so that the verbs that run cells share one rule.
A ``--slurm-*`` flag without ``--launcher slurm`` is a usage error (it would be silently ignored otherwise), and so
is ``--launcher slurm`` where submitit or ``sbatch`` is missing: one line, exit 2, nothing submitted.
"""

from __future__ import annotations

import argparse
import shutil

#: the flags that only mean something with ``--launcher slurm``, by attribute: their defaults
SLURM_DEFAULTS = {"slurm_partition": None, "slurm_gpus_per_task": 0, "slurm_cpus_per_task": 1, "slurm_time": None,
                  "slurm_parallelism": None, "slurm_setup": None, "slurm_python": None, "slurm_mem": None,
                  "slurm_wait": None}


def slurm_options(args: argparse.Namespace):
    """The run's ``SlurmOptions`` with ``--launcher slurm``, else None; raises ``UsageError`` on a ``--slurm-*``
    flag without it, or where this machine cannot submit."""
    from bench.parser import UsageError

    launcher = getattr(args, "launcher", "local")
    given = [name for name, default in SLURM_DEFAULTS.items() if getattr(args, name, default) != default]
    if launcher != "slurm":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} only applies with --launcher slurm")
        return None
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError("--launcher slurm needs submitit here: pip install submitit (the nodes' Python needs it "
                         "too)") from None
    if shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm: sbatch is not on PATH; run from a machine that submits to the cluster")
    from harness.run.slurm.params import SlurmOptions

    wait = {"died_wait_s": args.slurm_wait} if args.slurm_wait else {}
    return SlurmOptions(partition=args.slurm_partition, gpus_per_task=args.slurm_gpus_per_task,
                        cpus_per_task=args.slurm_cpus_per_task, time_min=args.slurm_time,
                        parallelism=args.slurm_parallelism, setup=tuple(args.slurm_setup or ()),
                        python=args.slurm_python, mem_bytes=args.slurm_mem, **wait)


def run_cells(options, cells: list, store, **kwargs):
    """The verb's cells on the chosen launcher: ``harness.run.runner.run_matrix`` (local) or
    ``harness.run.slurm.launcher.run_matrix_slurm`` (``options`` from :func:`slurm_options`); same rows either way."""
    if options is None:
        from harness.run.runner import run_matrix

        if kwargs.get("resume"):  # rows a Slurm run of this run id left in part files count before any cell runs
            from harness.run.slurm.parts import merge_leftovers

            with store.writing():
                merge_leftovers(store, store.append)
        return run_matrix(cells, store, **kwargs)
    from harness.run.slurm.launcher import run_matrix_slurm

    kwargs.pop("refresh_peak", None)  # each node measures its own peak once, cached there
    return run_matrix_slurm(cells, store, options, **kwargs)


def interrupted_note(options) -> str:
    """What an interrupt leaves behind on Slurm: the jobs run on, and ``--resume`` collects their rows."""
    if options is None:
        return ""
    return "; the Slurm jobs already submitted run on, and --resume merges their rows"
