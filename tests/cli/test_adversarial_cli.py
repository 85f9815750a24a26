"""Adversarial inputs through the real command line: every one ends as ONE line and exit 2.

Each case is ``python -m bench ...`` in a fresh process, run from an empty working directory
with ``--results`` under the test's own folder, exactly as a user would type it. For every case:
exit status 2, exactly one non-empty line on stderr, no traceback anywhere, nothing written
outside the results directory (the inputs, the working directory and the repository's untracked
files are compared before and after), and no framework imported: stand-in ``torch``, ``jax``,
``keras``... packages first on the path record any import of them in a file, which the
before/after comparison would catch. All of them fail before a worker starts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.paths import REPO

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

NUMPY_IMPL = str(REPO / "tests" / "fixtures" / "planted.py") + ":NumpyVAE"
K3 = 32  # canonical 3-mers
FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "optax", "keras", "tensorflow")
ERROR_LINE = re.compile(r"^vaebench( [a-z][a-z0-9-]*)?: error: \S")

#: ``run`` with a working impl and small, valid settings: each case changes one thing
RUN = ["run", "--impl", NUMPY_IMPL, "--kmer", "3", "--steps", "2", "--batch", "4", "--no-progress",
       "--no-preflight", "--results", "{results}"]


def run_with(*extra: str) -> list[str]:
    return [*RUN, *extra]


def run_impl(impl: str) -> list[str]:
    args = list(RUN)
    args[args.index("--impl") + 1] = impl
    return args


def profiles(rows: int = 64, width: int = K3) -> np.ndarray:
    x = np.random.default_rng(0).random((rows, width), dtype=np.float32)
    return x / x.sum(axis=1, keepdims=True)


def _inputs(root: Path) -> None:
    """Every bad (and one good) input file the table refers to as {in}/NAME."""
    root.mkdir(parents=True, exist_ok=True)
    good = profiles()
    np.save(root / "good.npy", good)
    np.save(root / "wide48.npy", profiles(width=48))
    np.save(root / "one_d.npy", good[0])
    np.save(root / "three_d.npy", good.reshape(8, 8, K3))
    bad = good.copy()
    bad[5, 7] = np.nan
    np.save(root / "nan.npy", bad)
    bad = good.copy()
    bad[9, 2] = np.inf
    np.save(root / "inf.npy", bad)
    bad = good.copy()
    bad[3, 30] = 7.5
    np.save(root / "above_one.npy", bad)
    np.save(root / "ints.npy", (good * 100).astype(np.int64))
    np.save(root / "zero_rows.npy", np.zeros((0, K3), np.float32))
    np.save(root / "two_rows.npy", good[:2])
    (root / "data.txt").write_text("0.1 0.2\n")
    (root / "not_yaml.yaml").write_text("name: [unclosed\n  - {type: dense\n")
    spec = {"name": "s", "input_length": 32, "latent_dim": 4,
            "encoder": [{"type": "dense", "units": 8}], "decoder": [{"type": "dense", "units": 32}]}
    (root / "unknown_layer.json").write_text(json.dumps(
        {**spec, "encoder": [{"type": "frobnicate", "units": 8}]}))
    (root / "negative_units.json").write_text(json.dumps({**spec, "encoder": [{"type": "dense", "units": -8}]}))
    (root / "bad_shape.json").write_text(json.dumps(
        {**spec, "encoder": [{"type": "reshape", "shape": [32, 1]}, {"type": "max_pool1d", "pool_size": 5},
                             {"type": "flatten"}]}))
    (root / "syntax_error.py").write_text("from harness.adapter import VAEAdapter\n\nclass Broken(VAEAdapter:\n")
    (root / "not_adapter.py").write_text("class NotAdapter:\n    name = 'x'\n\nVALUE = 3\n")
    (root / "broken_import.py").write_text("from harness.adapter import VAEAdapter\nimport no_such_module_xyz\n\n"
                                           "class Good(VAEAdapter):\n    pass\n")
    (root / "abstract.py").write_text("from harness.adapter import VAEAdapter\n\n"
                                      "class Half(VAEAdapter):\n    def param_counts(self):\n        return None\n")
    (root / "a_file").write_text("not a directory\n")
    row = {"schema_version": 1, "run_id": "a", "cell_key": "k1", "impl": "torch", "row": "torch",
           "spec_name": "dense", "spec_hash": "h", "batch": 64, "repeat": 0, "status": "ok", "failure_kind": "ok"}
    (root / "run_a.jsonl").write_text(json.dumps(row) + "\n")
    (root / "run_b.jsonl").write_text(json.dumps({**row, "run_id": "b", "cell_key": "k2", "impl": "flax",
                                                  "row": "flax", "batch": 128}) + "\n")
    (root / "not_rows.jsonl").write_text("[1, 2, 3]\n")
    (root / "batch_word.jsonl").write_text(json.dumps({**row, "batch": "sixteen"}) + "\n")
    (root / "latin.jsonl").write_bytes(json.dumps(row).encode() + b"\n" + b"caf\xe9\n")  # a Latin-1 line
    for name, change in (("lr_word", {"optimizer": {"lr": "fast"}}), ("beta1_five", {"optimizer": {"beta1": 5}}),
                         ("seed_word", {"settings": {"seed": "abc"}})):
        (root / f"{name}.json").write_text(json.dumps({**spec, **change}))
    (root / "beta_nan.yaml").write_text(json.dumps(spec)[:-1] + ', "loss": {"beta": .nan}}\n')  # YAML's NaN
    os.symlink("loop.npy", root / "loop.npy")  # a link to itself
    (root / "folder.py").mkdir()
    (root / "specdir").mkdir()
    (root / "specdir.yaml").mkdir()
    os.mkfifo(root / "pipe.yaml")  # read, it would block the command forever
    (root / "binary.json").write_bytes(b"\x93NUMPY\x01\x00" + bytes(range(256)))
    os.symlink("/dev/null", root / "null.py")
    here = os.getcwd()
    os.chdir(root)  # a socket's path is limited to ~107 bytes, and a TMPDIR can be longer
    try:
        with socket.socket(socket.AF_UNIX) as sock:  # the socket file stays after the socket is closed
            sock.bind("plugin.py")
    finally:
        os.chdir(here)
    (root / "cache_is_a_file" / "cache").parent.mkdir()
    (root / "cache_is_a_file" / "cache").write_text("a file where the compilation cache goes\n")
    poison = root / "poison"
    for name in FRAMEWORKS:
        (poison / name).mkdir(parents=True, exist_ok=True)
        (poison / name / "__init__.py").write_text(
            "import os\n"
            "with open(os.environ['VAEBENCH_POISON_LOG'], 'a') as f:\n"
            f"    f.write('{name} imported\\n')\n"
            f"raise ImportError('the parent imported {name}')\n")


#: (id, argv with {in} and {results} placeholders, a fragment the one line must contain)
CASES: list[tuple[str, list[str], str]] = [
    # ---- flags and values
    ("kmer-zero", ["params", "--kmer", "0"], "--kmer"),
    ("kmer-negative", run_with("--kmer", "-1"), "--kmer"),
    ("kmer-word", run_with("--kmer", "abc"), "--kmer"),
    ("batch-zero", run_with("--batch", "0"), "--batch"),
    ("batch-negative", run_with("--batch", "-5"), "--batch"),
    ("batch-word", run_with("--batch", "abc"), "--batch"),
    ("batch-empty-item", run_with("--batch", "1,,2"), "empty item"),
    ("batch-trailing-comma", run_with("--batch", "4,"), "empty item"),
    ("batch-empty", run_with("--batch", ""), "empty item"),
    ("batch-twice", run_with("--batch", "4,4"), "twice"),
    ("batch-beyond-int64", run_with("--batch", str(2**63)), "64-bit"),
    ("steps-zero", run_with("--steps", "0"), "--steps"),
    ("repeats-zero", run_with("--repeats", "0"), "--repeats"),
    ("timeout-negative", run_with("--timeout", "-1"), "--timeout"),
    ("timeout-nan", run_with("--timeout", "nan"), "--timeout"),
    ("unknown-verb", ["frobnicate"], "frobnicate"),
    ("no-verb", [], "verb"),
    ("unknown-flag", run_with("--frobnicate"), "--frobnicate"),
    ("memory-limit-unit", run_with("--memory-limit", "12XB"), "12XB"),
    ("inject-leak-word", run_with("--inject-leak", "abc"), "--inject-leak"),
    ("heap-choice", run_with("--heap", "sometimes"), "--heap"),
    # ---- specs
    ("spec-unknown-preset", run_with("--spec", "no-such-spec"), "no-such-spec"),
    ("spec-empty-item", run_with("--spec", "dense,"), "empty item"),
    ("spec-empty", run_with("--spec", ""), "empty item"),
    ("spec-file-missing", run_with("--spec", "{in}/missing.yaml"), "missing.yaml"),
    ("spec-file-not-yaml", run_with("--spec", "{in}/not_yaml.yaml"), "not_yaml.yaml"),
    ("spec-unknown-layer", run_with("--spec", "{in}/unknown_layer.json"), "frobnicate"),
    ("spec-negative-units", run_with("--spec", "{in}/negative_units.json"), "units"),
    ("spec-impossible-shape", run_with("--spec", "{in}/bad_shape.json"), "max_pool1d"),
    ("preset-impossible-at-k", run_with("--spec", "conv-final", "--kmer", "6"), "max_pool1d"),
    # issue 25: a spec path that is not a regular text file (a directory printed a 28-line traceback)
    ("spec-is-a-directory", run_with("--spec", "{in}/specdir"), "specdir is a directory"),
    ("spec-yaml-is-a-directory", run_with("--spec", "{in}/specdir.yaml"), "specdir.yaml is a directory"),
    ("spec-is-a-fifo", run_with("--spec", "{in}/pipe.yaml"), "pipe.yaml is a FIFO"),
    ("spec-is-a-device", run_with("--spec", "/dev/null"), "/dev/null is a character device"),
    ("spec-is-binary", run_with("--spec", "{in}/binary.json"), "binary.json is not UTF-8 text"),
    # issue 27: these four reached a worker and exited 1
    ("spec-lr-word", run_with("--spec", "{in}/lr_word.json"), "optimizer.lr"),
    ("spec-beta1-above-one", run_with("--spec", "{in}/beta1_five.json"), "optimizer.beta1"),
    ("spec-seed-word", run_with("--spec", "{in}/seed_word.json"), "settings.seed"),
    ("spec-beta-nan", run_with("--spec", "{in}/beta_nan.yaml"), "loss.beta"),
    # ---- scenarios
    ("scenario-unknown", run_with("--scenario", "no-such-scenario"), "no-such-scenario"),
    ("scenario-wrong-impl", run_with("--scenario", "torch-loss-total"), "torch-loss-total"),
    # ---- data
    ("data-missing", run_with("--data", "{in}/missing.npy"), "does not exist"),
    ("data-not-npy", run_with("--data", "{in}/data.txt"), ".npy"),
    ("data-one-d", run_with("--data", "{in}/one_d.npy"), "2-D"),
    ("data-three-d", run_with("--data", "{in}/three_d.npy"), "2-D"),
    ("data-nan", run_with("--data", "{in}/nan.npy"), "row 5, column 7"),
    ("data-inf", run_with("--data", "{in}/inf.npy"), "row 9, column 2"),
    ("data-above-one", run_with("--data", "{in}/above_one.npy"), "row 3, column 30"),
    ("data-int-dtype", run_with("--data", "{in}/ints.npy"), "int64"),
    ("data-zero-rows", run_with("--data", "{in}/zero_rows.npy"), "0 rows"),
    ("data-zero-rows-wrap", run_with("--data", "{in}/zero_rows.npy", "--wrap"), "0 rows"),
    ("data-fewer-rows-than-batch", run_with("--data", "{in}/two_rows.npy"), "--wrap"),
    ("data-wrong-columns", run_with("--data", "{in}/wide48.npy"), "48 columns"),
    ("data-is-a-directory", run_with("--data", "{in}/poison"), "is a directory"),
    ("data-symlink-loop", run_with("--data", "{in}/loop.npy"), "symbolic link loop"),
    ("columns-reversed", run_with("--data", "{in}/wide48.npy", "--columns", "48:16"), "reversed"),
    ("columns-empty", run_with("--data", "{in}/wide48.npy", "--columns", "16:16"), "empty"),
    ("columns-out-of-range", run_with("--data", "{in}/wide48.npy", "--columns", "0:100"), "outside"),
    ("columns-negative-out-of-range", run_with("--data", "{in}/wide48.npy", "--columns=-100:"), "outside"),
    ("columns-negative-reversed", run_with("--data", "{in}/wide48.npy", "--columns=-8:-40"), "reversed"),
    ("columns-not-a-range", run_with("--data", "{in}/wide48.npy", "--columns", "16"), "A:B"),
    ("columns-negative-as-flag", run_with("--data", "{in}/wide48.npy", "--columns", "-32:"), "--columns=-32:"),
    ("columns-without-data", run_with("--columns", "0:32"), "--data"),
    ("wrap-without-data", run_with("--wrap"), "--data"),
    # ---- impls
    ("impl-file-missing", run_impl("{in}/missing.py:Model"), "does not exist"),
    ("impl-no-attribute", run_impl(NUMPY_IMPL.replace(":NumpyVAE", ":NoSuchClass")), "NoSuchClass"),
    ("impl-not-a-class", run_impl("{in}/not_adapter.py:VALUE"), "not a class"),
    ("impl-not-an-adapter", run_impl("{in}/not_adapter.py:NotAdapter"), "VAEAdapter"),
    ("impl-syntax-error", run_impl("{in}/syntax_error.py:Broken"), "line 3"),
    ("impl-import-fails", run_impl("{in}/broken_import.py:Good"), "no_such_module_xyz"),
    ("impl-abstract", run_impl("{in}/abstract.py:Half"), "train_step"),
    ("impl-module-missing", run_impl("no_such_pkg.models:VAE"), "no_such_pkg"),
    ("impl-module-attr-missing", run_impl("tests.fixtures.planted:NoSuchClass"), "NoSuchClass"),
    ("impl-unknown-builtin", run_impl("pytorch"), "pytorch"),
    ("impl-empty-item", run_impl("torch,,flax"), "empty item"),
    ("impl-empty", run_impl(""), "empty item"),
    ("impl-no-class-after-colon", run_impl("{in}/not_adapter.py:"), "Class"),
    ("impl-twice", run_impl(f"{NUMPY_IMPL},{NUMPY_IMPL}"), "twice"),
    ("impl-file-is-a-directory", run_impl("{in}/folder.py:VAE"), "is a directory"),
    ("impl-file-is-a-device", run_impl("{in}/null.py:VAE"), "character device"),
    ("impl-file-is-a-socket", run_impl("{in}/plugin.py:VAE"), "socket"),
    # ---- results directory and run id
    ("results-is-a-file", run_with("--results", "{in}/a_file"), "a_file"),
    ("results-under-a-file", run_with("--results", "{in}/a_file/results"), "a_file"),
    ("results-under-proc", run_with("--results", "/proc/vaebench-results"), "/proc"),
    ("run-id-escape", run_with("--run-id", "../../escape"), "escape"),
    ("run-id-slash", run_with("--run-id", "a/b"), "a/b"),
    ("run-id-empty", run_with("--run-id", ""), "run id"),
    ("results-empty", run_with("--results", ""), "empty string"),
    ("results-cache-is-a-file", run_with("--results", "{in}/cache_is_a_file"), "cache must be a directory"),
    # ---- the launcher (docs/slurm.md): a Slurm flag without it, a launcher that does not exist
    ("slurm-flag-without-launcher", run_with("--slurm-partition", "gpu"), "only applies with --launcher slurm"),
    ("launcher-unknown", run_with("--launcher", "kubernetes"), "invalid choice"),
    ("slurm-gpus-negative", run_with("--launcher", "slurm", "--slurm-gpus-per-task", "-1"), "slurm-gpus-per-task"),
    # ---- compare, report, preflight, sweep, overhead
    ("compare-missing-file", ["compare", "{in}/nothing.jsonl", "{in}/run_a.jsonl"], "nothing.jsonl"),
    ("compare-missing-run-id", ["compare", "no-such-run", "{in}/run_a.jsonl", "--results-dir", "{in}"],
     "no-such-run"),
    ("compare-no-common-cell", ["compare", "{in}/run_a.jsonl", "{in}/run_b.jsonl"], "no cell in common"),
    ("compare-not-results", ["compare", "{in}/good.npy", "{in}/run_a.jsonl"], "good.npy"),
    ("compare-rows-not-objects", ["compare", "{in}/not_rows.jsonl", "{in}/run_a.jsonl"], "not_rows.jsonl"),
    ("compare-device", ["compare", "/dev/null", "{in}/run_a.jsonl"], "character device"),
    ("compare-batch-word", ["compare", "{in}/batch_word.jsonl", "{in}/run_a.jsonl"], "sixteen"),
    ("compare-not-utf8", ["compare", "{in}/latin.jsonl", "{in}/run_a.jsonl"], "decode byte 0xe9"),
    ("report-batch-word", ["report", "{in}/batch_word.jsonl", "--out", "{results}"], "sixteen"),
    ("report-not-utf8", ["report", "{in}/latin.jsonl", "--out", "{results}"], "decode byte 0xe9"),
    ("compare-negative-threshold", ["compare", "{in}/run_a.jsonl", "{in}/run_a.jsonl", "--threshold", "-1"],
     "--threshold"),
    ("compare-alpha-above-one", ["compare", "{in}/run_a.jsonl", "{in}/run_a.jsonl", "--alpha", "2"], "--alpha"),
    ("report-missing-dir", ["report", "{in}/no-such-dir"], "no-such-dir"),
    ("report-run-id-dotdot", ["report", "{in}/run_a.jsonl", "--run-id", "..", "--out", "{results}"], "'..'"),
    ("report-out-is-a-file", ["report", "{in}/run_a.jsonl", "--out", "{in}/a_file"], "a_file"),
    ("preflight-batch-zero", ["preflight", "--spec", "dense", "--kmer", "3", "--batch", "0"], "--batch"),
    ("preflight-no-batch", ["preflight", "--spec", "dense", "--kmer", "3"], "--batch"),
    ("preflight-device-memory-unit", ["preflight", "--spec", "dense", "--kmer", "3", "--batch", "8",
                                      "--device-memory", "12XB"], "12XB"),
    ("preflight-eval-batch-1e20", ["preflight", "--spec", "dense", "--kmer", "3", "--batch", "8", "--eval-batch",
                                   "1e20"], "--eval-batch"),
    ("preflight-unknown-spec", ["preflight", "--spec", "nope", "--kmer", "3", "--batch", "8"], "nope"),
    ("sweep-start-zero", ["sweep", "--impl", NUMPY_IMPL, "--kmer", "3", "--start", "0"], "--start"),
    ("overhead-negative-tolerance", ["overhead", "--tolerance", "-1"], "--tolerance"),
    ("params-impl-empty-item", ["params", "--kmer", "3", "--spec", "dense", "--impl", "torch,"], "empty item"),
    ("matrix-kmer-zero", ["matrix", "--kmer", "0"], "--kmer"),
    ("parity-batch-zero", ["parity", "--kmer", "3", "--batch", "0"], "--batch"),
    ("matrix-unknown-spec", ["matrix", "--spec", "nosuch", "--kmer", "3", "--results", "{results}"], "nosuch"),
    ("matrix-no-cell-at-this-k", ["matrix", "--spec", "conv-final", "--kmer", "3", "--results", "{results}"],
     "no cell to run at k=3"),
    ("curves-steps-zero", ["curves", "--kmer", "3", "--steps", "0"], "--steps"),
    ("curves-target-negative", ["curves", "--kmer", "3", "--target-recon", "-5"], "--target-recon"),
    ("target-check-one-repeat", ["target-check", "--kmer", "3", "--repeats", "1", "--results", "{results}"],
     "--repeats must be at least 2"),
    ("target-check-reference-missing", ["target-check", "--kmer", "3", "--impl", "flax", "--results", "{results}"],
     "--reference torch is not among --impl flax"),
    # issue 27: both trained every impl first, then lost every curve or read "differs"
    ("curves-results-unwritable", ["curves", "--kmer", "3", "--steps", "2", "--every", "1", "--results", "/proc/x"],
     "cannot write results to /proc/x"),
    ("curves-data-nan", ["curves", "--kmer", "3", "--steps", "2", "--every", "1", "--batch", "4", "--data",
                         "{in}/nan.npy", "--results", "{results}"], "NaN"),
    ("probe-int32-results-unwritable", ["probe-int32", "--impl", "torch", "--results", "/proc/x"],
     "cannot write results to /proc/x"),
    ("probe-int32-negative-timeout", ["probe-int32", "--impl", "torch", "--timeout", "-1"], "--timeout"),
    ("baseline-batch-zero", ["baseline", "--batch", "0"], "--batch"),
    ("fit-memory-no-results", ["fit-memory"], "--results"),
    ("scenarios-unknown-flag", ["scenarios", "--frobnicate"], "--frobnicate"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adversarial") / "in"
    _inputs(root)
    return root


def _listing(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if skip is not None and p == skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns if p.is_file() else 0)
    return out


def _repo_untracked() -> set[str]:
    """Untracked paths of the repository, ignored ones included (``results/``, ``reports/out/``), less
    what people and tools make while the suite runs: Python sources, byte code, dot-folder caches."""
    out = subprocess.run(["git", "ls-files", "--others", "--directory"], cwd=REPO, capture_output=True,
                         text=True, check=True)
    names = {p for p in out.stdout.splitlines()
             if not p.startswith(".") and not p.endswith((".py", ".pyc", "__pycache__/"))}
    for sub in ("results", "reports/out"):
        if (REPO / sub).is_dir():
            names |= {str(p.relative_to(REPO)) for p in (REPO / sub).rglob("*")}
    return names


def test_every_verb_has_a_bad_input_case():
    """A verb added to the parser without a case here fails this test (it replaced one that only counted the
    table's rows): every verb's bad input must be seen to end as one line and exit 2."""
    import argparse

    from bench.parser import build_parser

    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    uncovered = set(verbs) - {argv[0] for _, argv, _ in CASES if argv}
    assert not uncovered, f"no bad-input case for: {sorted(uncovered)}"


@pytest.mark.parametrize("argv,fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2(inputs, tmp_path, argv, fragment):
    cwd, results = tmp_path / "cwd", tmp_path / "results"
    cwd.mkdir()
    args = [a.replace("{in}", str(inputs)).replace("{results}", str(results)) for a in argv]
    env = dict(os.environ, VAEBENCH_POISON_LOG=str(cwd / "framework-imports.log"), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(inputs / "poison"), str(REPO), env.get("PYTHONPATH"))
                                        if p)
    before = (_listing(inputs), _listing(tmp_path, skip=results), _repo_untracked())
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    after = (_listing(inputs), _listing(tmp_path, skip=results), _repo_untracked())
    detail = f"rc={proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, detail
    assert proc.returncode == 2, detail
    assert len(lines) == 1, detail
    assert ERROR_LINE.match(lines[0]), detail
    assert fragment in lines[0], detail
    assert after[0] == before[0], f"inputs changed: {set(after[0]) ^ set(before[0])}"
    assert after[1] == before[1], f"written outside the results dir: {set(after[1]) ^ set(before[1])}"
    assert after[2] <= before[2], f"written into the repository: {after[2] - before[2]}"


def test_the_command_line_starts_without_scipy():
    """scipy.stats takes about 1.3 s to import; ``python -m bench`` imports it only when a statistic is
    computed, so a bad flag's one line comes in under half a second (0.45 s here, 1.9 s before)."""
    code = "import sys, bench.cli, bench.parser; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
