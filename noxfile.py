"""nox sessions: the only entry points a fresh machine needs (Python and nox).

* ``nox -s tests``             - the test suite, CPU builds of every framework
                                 (``-- --cuda`` on a GPU machine: CUDA builds, GPU tests run).
* ``nox -s bench -- --kmer 7`` - the default matrix and its report.
* ``nox -s report``            - rebuild reports from stored results.
* ``nox -s lint``              - ruff and the import-linter layering contract (``tests`` runs both first).
* ``nox -s leakcheck``         - injected leaks confirmed, clean cells clean, on four builds at the main
                                 command's per-cell budget (about 5 minutes).
* ``nox -s microbench``        - pytest-benchmark timings of preflight, report building, result loading and
                                 each impl's staged train step.

``bench`` picks CUDA builds when an NVIDIA GPU answers ``nvidia-smi``; pass
``--cpu`` or ``--cuda`` after ``--`` to force either.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = None  # the interpreter nox itself runs on
TORCH = "torch==2.13.0"  # pinned: the CPU wheel on disk on these machines; others pull GBs of CUDA
CPU_FRAMEWORKS = [TORCH, "jax", "flax", "optax", "keras", "tensorflow-cpu"]
CUDA_FRAMEWORKS = [TORCH, "jax[cuda12]", "flax", "optax", "keras", "tensorflow[and-cuda]"]


#: the suite checks behaviour, not speed: one thread per framework keeps two test workers from
#: oversubscribing two cores (torch's OpenMP threads spin while another process holds a core, and a
#: 30 ms step took 500 ms); every row records these under fingerprint.inherited_env
TEST_ENV = {
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    # JAX's default random bits (threefry, "partitionable" since jax 0.5) take XLA's CPU compiler over twice as
    # long to compile as the older layout, and each initialiser shape and each step that draws compiles one. The
    # suite's checks set the weights and the noise they compare, so the bits never matter there. Measured on 2
    # cores: a Flax init of autoencoder-kl-small 6.1 -> 2.3 s, the keras-jax test child 108 -> 71 s, the suite's
    # parallel part 744 -> 665 s. `nox -s bench` keeps JAX's default, as users train
    "JAX_THREEFRY_PARTITIONABLE": "0",
}


def has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_gpus(args: list[str]) -> int:
    """The ``--slurm-gpus-per-task`` the bench arguments ask for (0 when none)."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--slurm-gpus-per-task=") else (
            args[i + 1] if arg == "--slurm-gpus-per-task" and i + 1 < len(args) else None)
        if value is not None:
            return int(value) if value.isdigit() else 0
    return 0


def install(session: nox.Session, cuda: bool) -> None:
    session.install(*(CUDA_FRAMEWORKS if cuda else CPU_FRAMEWORKS))
    session.install("-e", ".[test]")


LINTERS = ["ruff", "import-linter>=2.1"]


def run_linters(session: nox.Session) -> None:
    """ruff, then the import contract in pyproject.toml: a module that climbs a layer fails CI."""
    session.run("ruff", "check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The suite on CPU builds; ``nox -s tests -- --cuda`` installs the CUDA builds and leaves the GPU visible,
    so the GPU tests (skipped on a CPU) run on a GPU machine. Other arguments go to pytest."""
    args = list(session.posargs)
    cuda = "--cuda" in args
    args = [a for a in args if a != "--cuda"]
    if cuda and not has_nvidia_gpu():
        session.error("--cuda: no NVIDIA GPU answers nvidia-smi here; run the CPU suite without it")
    install(session, cuda=cuda)
    session.install(*LINTERS)
    run_linters(session)
    env = {k: v for k, v in TEST_ENV.items() if not (cuda and k == "CUDA_VISIBLE_DEVICES")}
    # the matmul peaks the suite's cells time, one thread each and beside another test, stay in the session's
    # own cache: the machine's (~/.cache/vaebench) is keyed by thread settings too, but is the user's
    env["VAEBENCH_CACHE_DIR"] = str(Path(session.create_tmp()) / "vaebench-cache")
    if args:
        session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, env=env)
        return
    # three pytest workers on CI's two cores: most tests wait on worker processes that import a framework or
    # sleep through a planted step, and with two the cores sat idle beside them (183% of two cores used; the
    # second worker's first chunk now starts the Keras children beside the parity workers, not after them).
    # Measured in the checkout on the 2-core Intel Xeon: 562 s with two, 471 s with three (192%). The tests that
    # compare two step times run afterwards, alone, so that no other test loads the cores
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "3", "--durations=12",
                "-m", "not timing", env=env)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "timing", "tests/measure", env=env)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    args = list(session.posargs)
    force_cpu, force_cuda = "--cpu" in args, "--cuda" in args
    args = [a for a in args if a not in ("--cpu", "--cuda")]
    if force_cpu and force_cuda:
        session.error("pass at most one of --cpu and --cuda")
    # a GPU partition (--launcher slurm --slurm-gpus-per-task N) runs the cells on the nodes' GPUs: CUDA builds
    # and the GPU matrix, though the machine that submits (a login node) has no GPU itself
    cuda = force_cuda or (not force_cpu and (slurm_gpus(args) > 0 or has_nvidia_gpu()))
    session.log(f"installing {'CUDA' if cuda else 'CPU'} builds of every framework")
    install(session, cuda=cuda)
    if not any(a.startswith("--kmer") for a in args):
        args = ["--kmer", "7", *args]
    args.append("--gpu" if cuda else "--cpu")  # plan the matrix for the builds just installed
    session.run("python", "-m", "bench", "matrix", *args)


@nox.session(python=PYTHON)
def leakcheck(session: nox.Session) -> None:
    """Injected leaks confirmed and clean cells clean on torch, flax, keras-jax and keras-torch, at the CPU
    main command's per-cell budget (``bench/leakcheck``): some 5 minutes, so not part of ``tests``."""
    install(session, cuda=False)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-v", "bench/leakcheck",
                *session.posargs)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("python", "-m", "bench", "report", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(*LINTERS)
    run_linters(session)


#: each impl's staged train step runs in a pytest process of its own: Keras fixes its backend per process
STEP_BENCHMARKS = [
    ("torch and not keras", {}),
    ("flax", {}),
    ("keras-jax", {"KERAS_BACKEND": "jax"}),
    ("keras-torch", {"KERAS_BACKEND": "torch"}),
    ("keras-tensorflow", {"KERAS_BACKEND": "tensorflow"}),
]


@nox.session(python=PYTHON)
def microbench(session: nox.Session) -> None:
    """pytest-benchmark timings: the framework-free tools, then each impl's staged train step (CPU builds)."""
    install(session, cuda=False)
    pytest = ["python", "-m", "pytest", "-p", "no:cacheprovider", "--benchmark-columns", "min,median,iqr,max,rounds"]
    session.run(*pytest, "bench/microbench/test_tooling.py", *session.posargs)
    for select, env in STEP_BENCHMARKS:
        session.run(*pytest, "bench/microbench/test_steps.py", "-k", select, *session.posargs, env=env)
    # the two timers on the real builds, with the figures printed (-s): see bench/microbench/crosscheck.py
    session.run(*pytest, "-s", "-p", "no:xdist", "bench/microbench/test_crosscheck.py")
