"""The command line's grammar: argument types and one parser per verb.

Every type here turns a bad value into one line that names the flag's expected form;
``bench.cli`` holds what each verb does.
"""

from __future__ import annotations

import argparse

from bench.fit_memory import add_fit_memory_parser
from harness.adapter import BUILTIN

#: the training loops of the Keras build (``impls.keras_vae.KerasVAE.loops``), its users' first
KERAS_LOOPS = ("fit", "train_on_batch")


class UsageError(ValueError):
    """A flag the user can fix; printed as one line."""


def split_list(text: str, flag: str = "the list") -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]``; an empty item (``a,,b``, ``a,``, ``""``) or a repeated one is an error."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise UsageError(f"{flag} {text!r} has an empty item; separate the items with single commas, "
                         "e.g. torch,flax or 64,256")
    seen = set()
    for item in items:
        if item in seen:
            raise UsageError(f"{flag} {text!r} names {item} twice; give each item once"
                             + (" (--repeats repeats a cell)" if flag == "--batch" else ""))
        seen.add(item)
    return items


def checked_impls(text: str | None) -> list[str]:
    """The impls to run, each checked here (a plug-in's file, class and base class) without
    importing a framework: a bad one is one line and exit 2, not a worker and a failed row."""
    from pathlib import Path

    from harness.plugin_check import check_plugin

    impls = split_list(text, "--impl") if text is not None else list(BUILTIN)
    out: list[str] = []
    for impl in impls:
        error = check_plugin(impl)
        if error:
            raise UsageError(error)
        target, _, attr = impl.rpartition(":")
        if target.endswith(".py"):  # workers start in the repo root: hand them an absolute path
            impl = f"{Path(target).resolve()}:{attr}"
        if impl in out:
            raise UsageError(f"--impl names {impl} twice; give each impl once (--repeats repeats a cell)")
        out.append(impl)
    return out


PRECISION_HELP = ("comma-separated precisions, each a row of its own: fp32, tf32 (float32 with TF32 matmuls; a GPU's, "
                  "skipped on a CPU), bf16 (mixed precision over float32 weights); default: the spec's own, fp32")


def precision_list(text: str) -> list[str]:
    """``fp32,bf16`` -> ``["fp32", "bf16"]``; an unknown precision is one line naming the known ones."""
    from harness.spec.schema import PRECISIONS

    try:
        items = split_list(text, "--precision")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    for item in items:
        if item not in PRECISIONS:
            hint = " (float16 is not offered: bf16 is the mixed precision every build runs)" if item in (
                "fp16", "float16", "half") else ""
            raise argparse.ArgumentTypeError(f"unknown precision {item!r}; use {', '.join(PRECISIONS)}{hint}")
    return items


def with_precisions(specs: list, precisions: list[str] | None, tf32: bool = False) -> list:
    """Each spec once per precision (spec-major, so a spec's rows sit together); None keeps each spec's own
    precision, or tf32 where the old ``--tf32`` flag asks for it. An explicit precision overrides a spec file's."""
    if precisions is None:
        return [spec.with_settings(precision="tf32") if tf32 else spec for spec in specs]
    return [spec.with_settings(precision=p, tf32=p == "tf32") for spec in specs for p in precisions]


#: every count the command line takes (batches, steps, sizes) becomes an int64 somewhere in a framework
INT64_MAX = 2**63 - 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    if value > INT64_MAX:
        raise argparse.ArgumentTypeError(f"{value} does not fit in a 64-bit integer (at most {INT64_MAX:,})")
    return value


def directory_arg(text: str) -> str:
    """``--results`` and ``--out``: a directory path, never an empty string (``--results ""`` wrote into the
    working directory, issue 27); whether it can be written is checked before any cell runs."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory path, got an empty string; leave the flag out for "
                                         "its default")
    return text


def non_negative_int(text: str) -> int:
    """0 or a positive integer (0 turns the thing off)."""
    return 0 if text.strip() == "0" else positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


#: --kmer where a fixed-length preset needs none (resolve_spec says so for a preset that does)
KMER_HELP = "k-mer length sizing the presets (a fixed-length preset such as masked-multiomics needs none)"


def kmer_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kmer takes a positive integer such as 7, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--kmer must be at least 1, got {value}")
    return value


SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def size_arg(text: str) -> int:
    """``1MiB``, ``64KiB``, ``24GB`` or plain bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write it like 1MiB, 64KiB or 24GB")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


def int_list(text: str) -> list[int]:
    try:
        items = split_list(text, "--batch")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    if any(v > INT64_MAX for v in values):
        raise argparse.ArgumentTypeError(f"--batch {text!r}: a batch must fit in a 64-bit integer (at most "
                                         f"{INT64_MAX:,})")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--batch {text!r} names a batch twice; give each once "
                                         "(--repeats repeats a cell)")
    return values


def columns_arg(text: str) -> str:
    """``A:B`` (either side may be empty or negative, as in a Python slice); checked against the
    file's width later (``harness.data.parse_columns``). Returned as written: it is part of a cell's key."""
    from harness.data import DataError, split_columns

    try:
        split_columns(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.05, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of at least 0, such as 0.05, got {text!r}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 such as 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 such as 0.05, got {text!r}")
    return value


DESCRIPTION = "python -m bench VERB: one verb per question the user asks."


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the user needs only the error line."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("argument --columns: expected one argument"):
            # argparse reads a value starting with "-" as a flag: --columns -32: never reaches columns_arg
            message += "; write a block that starts with a negative index as --columns=-32:"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: ``run`` and ``matrix``: a peak timed while the machine was busy is too low and would stay cached
REMEASURE_PEAK_HELP = "time the matmul peak again, though this machine has it cached (it was busy the first time)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vaebench", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("params", help="trainable and non-trainable counts per impl, and whether they agree")
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: all presets)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(BUILTIN)})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("parity", help="same weights in every impl: compare outputs, loss, gradients, one Adam step")
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--spec", help="preset name(s) or spec file(s) (default: dense,conv-final,conv-revised)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(BUILTIN)})")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--clip-norm", type=positive_float,
                   help="clip the global gradient norm to this before each Adam step (optimizer.clip_global_norm)")
    p.add_argument("--precision", type=precision_list, help=PRECISION_HELP)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("target-check", help="time whole runs to the target and compare them with the separable "
                                            "time to target (compile + steps x mean step)")
    p.add_argument("--spec", default="dense", help="preset name or spec file (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, default=5, help="k of the k-mer profile (default 5)")
    p.add_argument("--impl", default="torch,flax", help="comma-separated impls (default: torch,flax)")
    p.add_argument("--batch", type=int_list, default=[64, 256], help="comma-separated batch sizes (default 64,256)")
    p.add_argument("--steps", type=positive_int, default=300, help="the curves' steps, and each direct run's most")
    p.add_argument("--every", type=positive_int, default=5, help="read the held-out reconstruction every this many steps")
    p.add_argument("--repeats", type=positive_int, default=5, help="cells and direct runs per impl and batch (at least 2)")
    p.add_argument("--reference", default="torch", help="the impl whose curve gives the steps to target")
    p.add_argument("--target-recon", type=positive_float, help="the held-out reconstruction to reach (default: as curves)")
    p.add_argument("--results", type=directory_arg, default="results",
                   help="the record goes to RESULTS/target-check/RUN_ID.json, the cells and curves beside it")
    p.add_argument("--run-id", help="store under this run (default: a new id)")

    p = sub.add_parser("curves", help="train every impl the same steps from the same weights: do the curves agree?")
    p.add_argument("--spec", default="dense", help="preset name or spec file (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(BUILTIN)})")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--batch", type=int_list, default=[64],
                   help="comma-separated batch sizes: every impl trains at the first; the reference also trains at each "
                        "other, until it reaches the target, for the steps to target per batch (default 64)")
    p.add_argument("--every", type=positive_int, default=10,
                   help="read the held-out reconstruction, KL and gradient norm every this many steps")
    p.add_argument("--target-recon", type=positive_float,
                   help="the held-out reconstruction (nats per row) to reach (default: 90%% of the way from the "
                        "reference's start to where its curve at the first batch ends; docs/time-to-target.md)")
    p.add_argument("--reference", default="torch", help="the impl every other curve is judged against")
    p.add_argument("--precision", type=precision_list,
                   help="the precision(s) every impl trains in, judged against the reference in fp32 (default fp32)")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="skip the reference's second run from weights one float32 ulp apart (the drift any reduction "
                        "order gives, which sets the tolerances); fixed tolerances apply instead")
    p.add_argument("--data", help="a .npy file of rows (default: synthetic profiles)")
    p.add_argument("--columns", help="A:B, the block of --data's columns to use")
    p.add_argument("--results", type=directory_arg, default="results", help="curves are stored in RESULTS/curves/RUN_ID.jsonl")
    p.add_argument("--run-id", help="store under this run (default: a new id)")
    p.add_argument("--timeout", type=positive_float, default=1800.0, help="seconds per worker")
    p.add_argument("--json", action="store_true")
    add_launcher_arguments(p)

    p = sub.add_parser("preflight", help="every tensor's size, int32 overflow flags and a memory estimate")
    p.add_argument("--spec", required=True)
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--batch", type=positive_int, required=True)
    p.add_argument("--eval-batch", type=positive_int, help="batch of a validation predict() call, checked too")
    p.add_argument("--device-memory", type=size_arg, help="device memory to check against (default: detected)")
    p.add_argument("--gpu", action="store_true", help="judge as for a CUDA device (int32 overflow stops the cell)")
    p.add_argument("--flags-only", action="store_true", help="list only the tensors that overflow")
    p.add_argument("--impl", help="judge int32 for this impl's framework (default: every built-in impl side by side)")
    p.add_argument("--precision", type=precision_list, help="the precision(s) to estimate memory for (default fp32)")
    p.add_argument("--results", type=directory_arg, default="results", help="where cached probe-int32 results are read")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("probe-int32", help="run each op past 2^31 elements per impl: ok, raises, aborts, wrong or oom")
    p.add_argument("--impl", required=True, help="comma-separated impls, or a probe module path/to/file.py")
    p.add_argument("--device", choices=("gpu", "cpu"), help="where the ops run (default: a GPU if NVML sees one)")
    p.add_argument("--ops", help="comma-separated op kinds (default: every op of the spec language)")
    p.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per worker")
    p.add_argument("--results", type=directory_arg, default="results", help="where the rows are cached for preflight")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="largest batch each impl can train: doubling, then bisection")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(BUILTIN)})")
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--start", type=positive_int, default=64, help="first batch probed")
    p.add_argument("--max-batch", type=positive_int, default=16384, help="largest batch probed")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds per probe")
    p.add_argument("--precision", type=precision_list, help=PRECISION_HELP)
    p.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    p.add_argument("--memory-limit", type=size_arg, help="stop a probe whose RSS passes SIZE (host OOM)")
    p.add_argument("--device-memory", type=size_arg, help="device memory for preflight (default: detected)")
    p.add_argument("--no-preflight", action="store_true", help="probe even batches preflight says cannot fit")
    p.add_argument("--results", type=directory_arg, default="results")
    p.add_argument("--run-id")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    add_launcher_arguments(p)

    p = sub.add_parser("matrix", help="the default matrix for this device, then the report (nox -s bench)")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--impl", help="override the impls")
    p.add_argument("--spec", help="override the presets")
    p.add_argument("--batch", type=int_list, help="override the batch sizes")
    p.add_argument("--steps", type=positive_int, default=200, help="steady-state steps per cell (a time budget may cut them)")
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--budget-minutes", type=positive_float, help="time for all cells (default: 7 on CPU, none on GPU)")
    p.add_argument("--timeout", type=positive_float, default=900.0)
    p.add_argument("--device-memory", type=size_arg)
    p.add_argument("--cpu", action="store_true", help="plan for the CPU even if a GPU is present")
    p.add_argument("--gpu", action="store_true", help="plan the full GPU matrix")
    p.add_argument("--precision", type=precision_list,
                   help="the precisions of every cell (default: fp32 and bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    p.add_argument("--clip-norm", type=positive_float,
                   help="clip the global gradient norm to this before each Adam step (optimizer.clip_global_norm)")
    p.add_argument("--results", type=directory_arg, default="results",
                   help="results directory (checked writable before any cell)")
    p.add_argument("--run-id", help="name of the run: letters, digits, '-', '_', '.' (default: timestamp)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run (latest unless --run-id): skip ok and skipped cells, retry failed ones")
    p.add_argument("--keep-failed", action="store_true", help="with --resume, do not retry failed cells")
    p.add_argument("--out", type=directory_arg, default="reports/out", help="where reports are written")
    p.add_argument("--keras-loop", choices=KERAS_LOOPS,
                   help="how Keras rows train: fit over a PyDataset (the default, as Keras users train) or train_on_batch")
    p.add_argument("--confirm", choices=("auto", "on", "off"),
                   help="the untimed leak confirmation phase: where the steady verdict is pending (auto, the "
                        "default), in every cell (on), or never (off: a leak then stays unconfirmed)")
    p.add_argument("--curves-steps", type=non_negative_int, default=None,
                   help="steps of the training-curves run after the cells (dense preset; default 200 on a GPU, "
                        "100 on a CPU; 0: none)")
    p.add_argument("--remeasure-peak", action="store_true", help=REMEASURE_PEAK_HELP)
    p.add_argument("--no-progress", action="store_true")
    add_launcher_arguments(p)

    p = sub.add_parser("report", help="build a report from stored results")
    p.add_argument("results", nargs="*", help="result files, directories or run ids (default: the results dir)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--run-id", help="name of the report folder")
    p.add_argument("--out", type=directory_arg, default="reports/out")

    p = sub.add_parser("compare", help="step-time and memory ratios between two runs, with significance")
    p.add_argument("run_a", help="baseline: a results file or run id")
    p.add_argument("run_b", help="candidate: a results file or run id")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--threshold", type=non_negative_float, default=0.05,
                   help="slowdown that counts as a regression (0.05 = 5%%)")
    p.add_argument("--alpha", type=probability, default=0.05, help="significance level")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged (for CI)")
    p.add_argument("--format", choices=["table", "csv", "md", "json"], default="table",
                   help="table (the terminal's, full width when stdout is a file or a pipe), or the whole table as "
                        "csv, md (Markdown) or json (every field of every cell)")
    p.add_argument("--json", action="store_true", help="the same as --format json")

    p = sub.add_parser("overhead", help="benchmark: the harness's reported step time against a bare loop")
    p.add_argument("--impl", default="torch")
    p.add_argument("--spec", default="dense")
    p.add_argument("--kmer", type=kmer_arg, default=5)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--tolerance", type=non_negative_float, default=0.05,
                   help="exit 1 if any ratio's paired 95%% CI lies wholly further than this from 1")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("baseline", help="benchmark: the harness's step times against each framework's textbook loop")
    p.add_argument("--impl", default="torch",
                   help=f"comma-separated: {', '.join(n for n, b in BUILTIN.items() if b.baseline)}")
    p.add_argument("--spec", default="dense", help="a fully connected spec (the textbook loops build dense only)")
    p.add_argument("--kmer", type=kmer_arg, default=5)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--repeats", type=positive_int, default=4)
    p.add_argument("--tolerance", type=positive_float, default=1.10,
                   help="exit 1 if any harness/baseline ratio (step or device_step) is above this")
    p.add_argument("--precision", type=precision_list,
                   help="the precision(s) the harness cell and the textbook loop both train in (default fp32)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("scenarios", help="the leak anti-patterns --scenario runs: what each shows, and its fix")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="measure a matrix of cells (impl x spec x batch x repeat), each in its own worker")
    add_run_arguments(p)
    add_launcher_arguments(p)
    add_fit_memory_parser(sub)
    return parser


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from harness.store import DEFAULT_RESULTS_DIR

    p.add_argument("--impl", help=f"comma-separated impls or path/to/file.py:Class (default: {','.join(BUILTIN)})")
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, help=KMER_HELP)
    p.add_argument("--batch", type=int_list, default=[64], help="comma-separated batch sizes")
    p.add_argument("--steps", type=positive_int, default=200, help="steady-state steps per cell (after compile and warm-up)")
    p.add_argument("--repeats", type=positive_int, default=1, help="repeats per cell, interleaved across impls")
    p.add_argument("--data", help="a .npy file (rows x features), streamed as a memmap; default: synthetic profiles")
    p.add_argument("--columns", type=columns_arg,
                   help="A:B column block of --data, e.g. the 7-mer block of a multi-k matrix; negative indices "
                        "count from the end, as in Python (write --columns=-32: so the value is not read as a flag)")
    p.add_argument("--wrap", action="store_true",
                   help="allow a --data file with fewer rows than a batch; rows wrap around")
    p.add_argument("--results", type=directory_arg, default=str(DEFAULT_RESULTS_DIR), help="results directory (JSON Lines)")
    p.add_argument("--run-id", help="name of the run: letters, digits, '-', '_', '.' (default: timestamp)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run (latest unless --run-id): skip ok and skipped cells, retry failed ones")
    p.add_argument("--keep-failed", action="store_true", help="with --resume, do not retry failed cells")
    p.add_argument("--timeout", type=positive_float, default=900.0, help="seconds per cell")
    p.add_argument("--cell-budget", type=positive_float, metavar="SECONDS",
                   help="seconds each cell may spend, as a matrix budget hands one (about 21 s in the CPU main "
                        "command): the steady phase is cut to fit, the leak phase sized within it")
    p.add_argument("--inject-leak", type=size_arg, help="positive control: keep SIZE bytes per step, e.g. 1MiB")
    p.add_argument("--scenario", help="a named leak anti-pattern (see python -m bench scenarios)")
    p.add_argument("--precision", type=precision_list, help=PRECISION_HELP)
    p.add_argument("--tf32", action="store_true", help="the same as --precision tf32 (off by default, recorded in every row)")
    p.add_argument("--clip-norm", type=positive_float,
                   help="clip the global gradient norm to this before each Adam step (optimizer.clip_global_norm)")
    p.add_argument("--heap", choices=["auto", "on", "off"], default="auto", help="tracemalloc heap tracking")
    p.add_argument("--memory-limit", type=size_arg, help="stop a worker whose RSS passes SIZE (host OOM row)")
    p.add_argument("--device-memory", type=size_arg, help="device memory for preflight (default: detected)")
    p.add_argument("--no-preflight", action="store_true", help="run cells even when preflight says they cannot fit")
    p.add_argument("--keras-loop", choices=KERAS_LOOPS,
                   help="how Keras rows train: fit over a PyDataset (the default, as Keras users train) or train_on_batch")
    p.add_argument("--confirm", choices=("auto", "on", "off"),
                   help="the untimed leak confirmation phase: where the steady verdict is pending (auto, the "
                        "default), in every cell (on), or never (off: a leak then stays unconfirmed)")
    p.add_argument("--no-peak", action="store_true",
                   help="skip the matmul peak (each installed framework timed once per machine, then cached): rows get no MFU")
    p.add_argument("--remeasure-peak", action="store_true", help=REMEASURE_PEAK_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the new rows as JSON")


LAUNCHERS = ("local", "slurm")


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher`` and the ``--slurm-*`` flags (checked by ``bench.slurm_args.slurm_options``)."""
    g = p.add_argument_group("launcher", "where each cell's worker runs (docs/slurm.md)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: worker processes on this machine (default); slurm: one Slurm array task per cell, "
                        "through submitit, rows merged into --results (which the nodes must share)")
    g.add_argument("--slurm-partition", help="the partition to submit to (default: the cluster's default)")
    g.add_argument("--slurm-gpus-per-task", type=non_negative_int, default=0, help="GPUs per cell (default 0)")
    g.add_argument("--slurm-cpus-per-task", type=positive_int, default=1, help="CPUs per cell (default 1)")
    g.add_argument("--slurm-time", type=positive_int, metavar="MINUTES",
                   help="each job's time limit (default: the cell's --timeout rounded up, plus 2 minutes)")
    g.add_argument("--slurm-parallelism", type=positive_int,
                   help="array tasks of one array that may run at once (default: all)")
    g.add_argument("--slurm-setup", action="append", metavar="LINE",
                   help="a shell line run before the worker, e.g. 'module load cuda/12.4'; repeat for several")
    g.add_argument("--slurm-python", metavar="PATH",
                   help="the Python the nodes run (default: this one, which must be on a shared filesystem); it "
                        "needs submitit and each impl's framework, checked by one small job before the arrays")
    g.add_argument("--slurm-mem", type=size_arg, metavar="SIZE",
                   help="a fixed --mem for every cell (default: 2 GiB plus the preflight estimate x 1.5 on a CPU)")
    g.add_argument("--slurm-wait", type=positive_float, metavar="SECONDS",
                   help="how long a job that left the queue without its row is waited for before its cell gets a "
                        "failed row with Slurm's state (default 30)")
