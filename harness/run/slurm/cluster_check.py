"""Before any array: one tiny Slurm job checks that the node's Python can import what the cells need.

Why: a node whose Python lacks a framework would otherwise fail every cell of that impl, each after its own wait in
the queue, and a Python without submitit fails every job before it writes anything. The check job runs the same
setup lines and the same Python the arrays will (``--slurm-python``, or this interpreter), with the same
``PYTHONPATH``, and finds each module without importing it (``importlib.util.find_spec``, as ``is_installed``
checks the local machine: seconds, not a framework's import time). A missing one is one line naming it, and the
command exits 2 (``harness.run.slurm.launcher.SlurmCheckFailed``) before anything else is submitted.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from harness.run.slurm.params import SlurmOptions
from harness.run.slurm.states import COMMAND_TIMEOUT_S, ended_state, queued_states
from harness.run.slurm.submit import python_setup

#: how long the check job may take, queue wait included, before the command gives up on it (exit 2)
CHECK_TIMEOUT_S = 600.0
MARKER = "VAEBENCH-CHECK "
#: seconds between two looks at the check job (``sbatch --wait`` polls every few seconds, growing: slower)
CHECK_POLL_S = 0.25


def needed_modules(impls: list[str]) -> dict[str, str]:
    """module -> what needs it: submitit and the harness (every job), and each built-in impl's frameworks.
    A plug-in's framework is unknown here; its worker says so in its row if it is missing."""
    from harness.adapter import BUILTIN

    needed = {"submitit": "every Slurm job (submitit runs the cell)", "harness": "every Slurm job (vaebench)"}
    for impl in impls:
        if impl in BUILTIN:
            for module in BUILTIN[impl].frameworks:
                needed.setdefault(module, f"impl {impl}")
    return needed


def check_script(python: str, modules: list[str], options: SlurmOptions) -> str:
    """The check job's batch script: the setup lines, then the node's Python finding each module."""
    code = ("import importlib.util, json, sys\n"
            f"mods = {modules!r}\n"
            "print(" + repr(MARKER) + " + json.dumps({'python': sys.executable, 'missing': "
            "[m for m in mods if importlib.util.find_spec(m) is None]}), flush=True)\n")
    lines = ["#!/bin/bash", *python_setup(options), f"{python} - <<'VAEBENCH_PY'", code.rstrip(), "VAEBENCH_PY"]
    return "\n".join(lines) + "\n"


def check_node_python(impls: list[str], options: SlurmOptions, folder: Path) -> str | None:
    """Run the check job and wait for it; None when the node's Python finds everything, else the one line to print.
    """
    python = options.python or shlex.quote(sys.executable)
    needed = needed_modules(impls)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "check-python.sh"
    script.write_text(check_script(python, list(needed), options))
    log = folder / "check-python.out"
    args = ["sbatch", "--parsable", "--job-name=vaebench-check", f"--output={log}", "--time=5", "--mem=512M",
            "--ntasks=1", "--cpus-per-task=1"]
    if options.partition:
        args.append(f"--partition={options.partition}")
    try:
        out = subprocess.run([*args, str(script)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        return "--launcher slurm: sbatch is not on PATH here; run from a machine that submits to the cluster"
    except subprocess.TimeoutExpired:
        return "--launcher slurm: sbatch did not answer; is the Slurm controller up?"
    job = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"--launcher slurm: sbatch refused the job that checks the node's Python: {why}"
    if not _wait_for(job, CHECK_TIMEOUT_S):
        return (f"--launcher slurm: the job checking the node's Python {python} (Slurm job {job}) did not end in "
                f"{CHECK_TIMEOUT_S:.0f} s, queue wait included; see {log}")
    text = log.read_text(errors="replace") if log.is_file() else ""
    result = next((json.loads(line[len(MARKER):]) for line in text.splitlines() if line.startswith(MARKER)), None)
    if result is None:
        why = (text.strip().splitlines()[-1:] or ["no output"])[-1]
        return f"--launcher slurm: the node's Python {python} did not run in check job {job}: {why} (log {log})"
    missing = result["missing"]
    if not missing:
        return None
    named = ", ".join(f"{m} (needed by {needed[m]})" for m in missing)
    return (f"--launcher slurm: the node's Python {result['python']} cannot import {named} (Slurm job {job}); "
            f"install it there, or pass --slurm-python with a Python that has it")


def _wait_for(job: str, timeout_s: float) -> bool:
    """Wait until Slurm no longer runs ``job``; False when it still does after ``timeout_s`` (it is cancelled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = queued_states()
        if queued is not None and job not in queued and not ended_state(job).active:
            return True
        time.sleep(CHECK_POLL_S)
    subprocess.run(["scancel", job], capture_output=True, timeout=COMMAND_TIMEOUT_S)
    return False
