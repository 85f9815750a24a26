"""What the user hands in, checked in the parent: plug-ins, their row labels, data files and lists.

Framework-free: the plug-ins here are numpy-only (``tests/fixtures/planted.py``) or written on the
spot; the few real runs use ``NumpyVAE`` and take a second or two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.paths import REPO

from bench.parser import UsageError, columns_arg, int_list, split_list
from harness.adapter import VAEAdapter, impl_label, plugin_label, row_label
from harness.data import BatchSource, DataError, check_rows, parse_columns
from harness.diagnose.failures import classify, crash_detail
from harness.plugin_check import check_plugin
from reports.compare import cells_summary

PLANTED = REPO / "tests" / "fixtures" / "planted.py"
K3 = 32


def planted_module():
    spec = importlib.util.spec_from_file_location("planted_for_inputs", PLANTED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def profiles(rows: int, width: int = K3) -> np.ndarray:
    x = np.random.default_rng(1).random((rows, width), dtype=np.float32)
    return x / x.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ plug-ins


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_check_plugin_missing_file(tmp_path):
    error = check_plugin(f"{tmp_path}/nope.py:Model")
    assert error and "nope.py" in error and "does not exist" in error


def test_check_plugin_missing_attribute_lists_the_classes():
    error = check_plugin(f"{PLANTED}:NoSuchVAE")
    assert error and "NoSuchVAE" in error and "NumpyVAE" in error


def test_check_plugin_not_an_adapter(tmp_path):
    f = write(tmp_path / "m.py", "class Plain:\n    pass\n\nclass FromObject(object):\n    pass\n\nN = 3\n")
    for attr in ("Plain", "FromObject"):
        error = check_plugin(f"{f}:{attr}")
        assert error and "VAEAdapter" in error and attr in error
    assert "not a class" in check_plugin(f"{f}:N")


def test_check_plugin_syntax_error_names_the_line(tmp_path):
    f = write(tmp_path / "m.py", "import os\n\n\nclass Broken(:\n    pass\n")
    error = check_plugin(f"{f}:Broken")
    assert error and "line 4" in error and "m.py" in error


@pytest.mark.worker
def test_check_plugin_module_that_does_not_import(tmp_path):
    f = write(tmp_path / "m.py", "from harness.adapter import VAEAdapter\nimport no_such_module_abc\n\n"
                                 "class Model(VAEAdapter):\n    pass\n")
    error = check_plugin(f"{f}:Model")
    assert error and "no_such_module_abc" in error and "cannot be imported" in error


@pytest.mark.worker
def test_check_plugin_imported_class_is_judged_by_an_import(tmp_path):
    """A class the file imports from elsewhere: the tree cannot tell, a throwaway import does."""
    f = write(tmp_path / "m.py", "from tests.fixtures.planted import NumpyVAE as Model\nfrom os import sep as Sep\n")
    assert check_plugin(f"{f}:Model") is None
    error = check_plugin(f"{f}:Sep")
    assert error and "VAEAdapter" in error
    assert check_plugin("tests.fixtures.planted:NumpyVAE") is None
    assert "NoSuch" in check_plugin("tests.fixtures.planted:NoSuch")
    assert "no_such_pkg_q" in check_plugin("no_such_pkg_q.models:VAE")


def test_check_plugin_abstract_class(tmp_path):
    f = write(tmp_path / "m.py", "from harness.adapter import VAEAdapter\n\nclass Half(VAEAdapter):\n"
                                 "    def param_counts(self):\n        return None\n")
    error = check_plugin(f"{f}:Half")
    assert error and "train_step" in error and "param_counts" not in error


def test_check_plugin_accepts_every_planted_adapter_without_importing():
    module = planted_module()
    names = [n for n, v in vars(module).items()
             if isinstance(v, type) and issubclass(v, VAEAdapter) and v.__module__ == module.__name__
             and not n.startswith("_")]
    assert "SegfaultVAE" in names
    for name in names:
        assert check_plugin(f"{PLANTED}:{name}") is None, name
    assert check_plugin("torch") is None  # a built-in row is not checked here


@pytest.mark.worker
def test_check_plugin_imports_no_framework_in_the_parent(tmp_path):
    """Judging a plug-in that derives from a framework build imports that framework only in a throwaway child."""
    f = write(tmp_path / "m.py", "from impls.torch_vae import TorchVAE\n\nclass Mine(TorchVAE):\n    pass\n")
    code = ("import sys; from harness.plugin_check import check_plugin; check_plugin(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'jax', 'keras', 'tensorflow', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, f"{f}:Mine"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.worker
def test_bad_impl_fails_in_the_parent_before_any_worker(tmp_path):
    f = write(tmp_path / "m.py", "class NotAnAdapter:\n    pass\n")
    out = bench("run", "--impl", f"{f}:NotAnAdapter", "--kmer", "3", "--steps", "2", "--no-progress",
                "--results", str(tmp_path / "results"))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "VAEAdapter" in out.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.jsonl"))


# ---------------------------------------------------------------------------- row labels


def test_plugin_label_rules():
    assert plugin_label("MyVAE", None) == "MyVAE"
    assert plugin_label("MyVAE", "mine") == "mine"
    assert plugin_label("MyVAE", "  ") == "MyVAE"
    assert plugin_label("MyVAE", "torch") == "torch (plug-in MyVAE)"
    assert plugin_label("MyVAE", "keras-jax") == "keras-jax (plug-in MyVAE)"


def test_row_label_ignores_an_inherited_name():
    class FakeTorch(VAEAdapter):  # stands in for impls.torch_vae.TorchVAE, which sets name = "torch"
        name = "torch"

    class Sub(FakeTorch):
        pass

    class Named(FakeTorch):
        name = "fast-torch"

    assert row_label(Sub, "my.py:Sub") == "Sub"
    assert row_label(Named, "my.py:Named") == "fast-torch"
    assert row_label(FakeTorch, "my.py:FakeTorch") == "torch (plug-in FakeTorch)"
    assert row_label(FakeTorch, "torch") == "torch"  # the built-in row keeps its label


def test_builtin_labels_unchanged():
    for name in ("torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"):
        assert impl_label(name) == name


def test_parent_and_worker_labels_agree_for_every_planted_class():
    module = planted_module()
    for name in ("NumpyVAE", "SegfaultVAE", "TunableNumpyVAE", "ImpostorVAE", "RenamedVAE"):
        impl = f"{PLANTED}:{name}"
        assert impl_label(impl) == row_label(getattr(module, name), impl), name
    assert impl_label(f"{PLANTED}:NumpyVAE") == "numpy"
    assert impl_label(f"{PLANTED}:SegfaultVAE") == "SegfaultVAE"
    assert impl_label(f"{PLANTED}:ImpostorVAE") == "torch (plug-in ImpostorVAE)"
    assert impl_label(f"{PLANTED}:RenamedVAE") == "numpy-renamed"
    assert impl_label("tests.fixtures.planted:NumpyVAE") == "numpy"


@pytest.mark.worker
def test_plugin_rows_carry_their_own_labels_and_a_wrong_count_fails_its_row(tmp_path):
    """Each plug-in row is labelled as its class says; ``BadCountVAE`` counts (1, -5) parameters, so its row
    fails with the reason and the run exits 1 (issue 27: such a plug-in was recommended at an MFU of 3666%), and
    ``OtherModelVAE``, another model whose ``set_weights`` refuses the spec's weights, fails with the same reason."""
    names = ("ImpostorVAE", "TunableNumpyVAE", "RenamedVAE", "BadCountVAE", "OtherModelVAE")
    impls = ",".join(f"tests/fixtures/planted.py:{n}" for n in names)
    out = bench("run", "--impl", impls, "--kmer", "3", "--batch", "4", "--steps", "3", "--no-progress",
                "--no-preflight", "--results", str(tmp_path), "--run-id", "labels", "--json")
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == ["torch (plug-in ImpostorVAE)", "TunableNumpyVAE", "numpy-renamed", "BadCountVAE",
                                        "OtherModelVAE"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed"]
    bad, other = rows[-2:]
    assert bad["failure_kind"] == "error", bad["failure_kind"]
    assert "param_counts() gives 1 trainable and -5 non-trainable parameters" in bad["failure_message"]
    assert "not the spec's model" in bad["failure_message"]
    # its set_weights refused the shared initial weights first: the row still names the cause, not the shape
    assert other["failure_kind"] == "error" and "not the spec's model" in other["failure_message"], other


# ---------------------------------------------------------------------------------- data


def test_columns_slices_like_python():
    assert parse_columns("-32:", 48) == slice(16, 48)
    assert parse_columns(":-16", 48) == slice(0, 32)
    assert parse_columns("8:-8", 48) == slice(8, 40)
    assert parse_columns(None, 48) == slice(0, 48)


@pytest.mark.parametrize("text,word", [("48:16", "reversed"), ("16:16", "empty"), ("-8:-40", "reversed"),
                                       ("0:100", "outside"), ("-100:", "outside"), ("40:-16", "reversed"),
                                       ("1:2:3", "A:B"), ("a:b", "A:B")])
def test_columns_errors_say_what_is_wrong(text, word):
    with pytest.raises(DataError, match=word):
        parse_columns(text, 48)


def test_columns_flag_rejects_a_reversed_block_at_parse_time():
    with pytest.raises(argparse.ArgumentTypeError, match="reversed; write the lower bound first"):
        columns_arg("48:16")
    assert columns_arg("-32:") == "-32:"  # kept as written: it is part of the cell's key


def test_zero_rows_and_short_files():
    empty = np.zeros((0, K3), np.float32)
    with pytest.raises(DataError, match="0 rows"):
        check_rows(empty, 4, wrap=True, where="data file x.npy")
    with pytest.raises(DataError, match="0 rows"):
        BatchSource(empty, 4)
    with pytest.raises(DataError, match="fewer than the batch of 64.*--wrap"):
        check_rows(profiles(10), 64, wrap=False, where="data file x.npy")
    check_rows(profiles(10), 64, wrap=True, where="data file x.npy")
    check_rows(profiles(64), 64, wrap=False, where="data file x.npy")


def test_short_memmap_wraps_around(tmp_path):
    np.save(tmp_path / "short.npy", profiles(3))
    src = BatchSource(np.load(tmp_path / "short.npy", mmap_mode="r"), 8)
    block = src.next()
    assert block.shape == (8, K3)
    np.testing.assert_array_equal(block[3], block[0])


@pytest.mark.worker
def test_short_file_runs_with_wrap_and_negative_columns(tmp_path):
    """--wrap lets a 3-row file feed batches of 8; --columns=-32: picks the last 32 of 48 columns."""
    x = np.concatenate([np.full((3, 16), 0.5, np.float32), profiles(3)], axis=1)
    np.save(tmp_path / "short.npy", x)
    common = ["run", "--impl", "tests/fixtures/planted.py:NumpyVAE", "--kmer", "3", "--batch", "8", "--steps", "3",
              "--no-progress", "--no-preflight", "--results", str(tmp_path / "results"),
              "--data", str(tmp_path / "short.npy"), "--columns=-32:"]
    refused = bench(*common)
    assert refused.returncode == 2 and "3 rows" in refused.stderr and "--wrap" in refused.stderr
    ran = bench(*common, "--wrap", "--run-id", "wrapped")
    assert ran.returncode == 0, ran.stderr
    row = json.loads((tmp_path / "results" / "wrapped.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok" and row["columns"] == "-32:"


# --------------------------------------------------------------------------------- lists


@pytest.mark.parametrize("text", ["1,,2", "dense,", ",torch", "", " , "])
def test_empty_list_items_are_errors(text):
    with pytest.raises(UsageError, match="empty item"):
        split_list(text, "--spec")


def test_int_list_errors():
    with pytest.raises(argparse.ArgumentTypeError, match="empty item"):
        int_list("1,,2")
    with pytest.raises(argparse.ArgumentTypeError, match="twice"):
        int_list("64,064")
    assert int_list(" 8, 16 ") == [8, 16]


# ---------------------------------------------------------------------------- crash lines


FAULTHANDLER_TAIL = """planted: SegfaultVAE fails now
Fatal Python error: Segmentation fault

Thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 324 in wait

Current thread 0x00007f0000000001 (most recent call first):
  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at
  File "/repo/tests/fixtures/planted.py", line 139 in fail
  File "/repo/harness/run/cell.py", line 120 in run_cell

Extension modules: numpy._core._multiarray_umath, numpy.linalg._umath_linalg (total: 2)""".splitlines()


def test_crash_message_keeps_the_fatal_line_and_first_frame():
    failure = classify(None, -11, FAULTHANDLER_TAIL, phase="compile")
    assert failure.kind == "crash_signal"
    assert "SIGSEGV" in failure.message
    assert "Fatal Python error: Segmentation fault" in failure.message
    assert 'line 519 in string_at' in failure.message  # the crashing thread's innermost frame
    assert "Extension modules" not in failure.message


def test_crash_message_prefers_the_frameworks_error_line():
    tail = ["2026-01-01 I some info", "terminate called after throwing an instance of 'c10::Error'",
            "  what():  CUDA error: an illegal instruction was encountered", *FAULTHANDLER_TAIL[1:]]
    detail = crash_detail(tail)
    assert detail.startswith("what():  CUDA error: an illegal instruction")
    assert "Extension modules" not in detail
    assert crash_detail(["Extension modules: numpy (total: 1)"]) == ""


# ------------------------------------------------------------------------------- compare


def test_cells_summary_names_the_cells():
    rows = [{"impl": "torch", "row": "torch", "spec_name": "dense", "spec_hash": "h", "batch": b} for b in (8, 16)]
    assert cells_summary(rows) == "torch dense b8, torch dense b16"
    many = [{"impl": "x", "spec_name": "s", "spec_hash": "h", "batch": b} for b in range(6)]
    assert cells_summary(many).endswith("and 2 more")


@pytest.mark.worker
def test_report_finds_a_run_id_in_results_dir(tmp_path):
    """``report RUN_ID --results-dir DIR`` built the report from ``results/`` instead, and crashed."""
    (tmp_path / "runs").mkdir()
    fixture = REPO / "tests" / "fixtures" / "report_real_torch_cpu.jsonl"
    (tmp_path / "runs" / "myrun.jsonl").write_text(fixture.read_text())
    out = bench("report", "myrun", "--results-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                "--run-id", "mine", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "mine" / "report.md").is_file()
