"""The recipe of docs/adding-a-framework.md, followed with a tiny numpy-only build.

Step 1, one impls file: ``tests/fixtures/tiny_vae.py``. Before it has a record it runs as a plug-in
(``--impl path/to/file.py:Class``, the documented path for a build outside the repository): the parent
checks it without importing it, a real worker trains it for a few steps, and the report builder gives
its row a colour of its own and places it after the built-in impls.

Step 2, one record: a ``BuiltinImpl`` for it in ``harness.impls_registry.BUILTIN`` (set here with
monkeypatch, as editing the file would) and every table that knows an impl knows it, with nothing else
edited: the worker's class lookup, the palette and the order, the int32 family and probe module, the
baseline, the leak scenarios, the failure classifier, the frameworks a worker reports loaded, the
command line's help and the default run's optional rows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.paths import REPO

from bench.baselines import BASELINES
from bench.parser import build_parser
from harness.adapter import BUILTIN, BuiltinImpl, impl_env, impl_label, is_installed, load_adapter_class, row_label
from harness.diagnose.failures import classify, says_out_of_memory
from harness.diagnose.int32 import IMPL_FRAMEWORK, installed_version, probe_hint
from harness.diagnose.scenarios import SCENARIOS, ScenarioError, check_scenario
from harness.impls_registry import impl_rank
from harness.measure.probes import frameworks_loaded
from harness.plugin_check import check_plugin
from harness.run.int32_probe import PROBE_MODULES, probe_module
from harness.run.matrix import plan_default
from reports.build import build_report
from reports.plots import IMPL_PALETTE, impl_colors

TINY = REPO / "tests" / "fixtures" / "tiny_vae.py"
REAL_TORCH_ROWS = REPO / "tests" / "fixtures" / "report_real_torch_cpu.jsonl"
STEPS = 12


def _swatch_names(page: Path) -> list[str]:
    """The impl labels of the report's colour key, in the order it shows them."""
    return re.findall(r'<span class="swatch" style="background:#[0-9a-f]{6}">([^<]+)</span>', page.read_text())


@pytest.mark.worker
def test_step_1_the_impls_file_runs_as_a_plugin_and_the_report_colours_and_orders_it(tmp_path):
    impl = f"{TINY}:TinyVAE"
    assert check_plugin(impl) is None  # judged from its syntax, in this process, importing no framework
    assert impl_label(impl) == "tiny-numpy"  # the name its class sets
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", impl, "--spec", "dense", "--kmer", "3",
                          "--batch", "16", "--steps", str(STEPS), "--results", str(tmp_path / "results"),
                          "--run-id", "recipe", "--no-progress", "--no-preflight", "--no-peak"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = [json.loads(line) for line in (tmp_path / "results" / "recipe.jsonl").read_text().splitlines()]
    assert row["status"] == "ok", row
    assert row["row"] == "tiny-numpy" and row["impl"] == str(TINY) + ":TinyVAE"
    assert row["frameworks_loaded"] == []  # numpy is no framework of any record: nothing else crept in
    assert row["versions"] == {"numpy": np.__version__}  # its versions(), in the row
    assert row["steps"] == STEPS and row["final_loss"] > 0 and np.isfinite(row["final_loss"])  # the reference loss

    # one report over its row and a real torch row: the plug-in is coloured apart and keyed after torch
    report = build_report([tmp_path / "results" / "recipe.jsonl", REAL_TORCH_ROWS], out_root=tmp_path / "out",
                          run_id="recipe", plots=False)
    colors = json.loads((report / "meta.json").read_text())["colors"]
    assert colors["torch"] == BUILTIN["torch"].colour
    assert colors["tiny-numpy"] not in {b.colour for b in BUILTIN.values()}
    key = _swatch_names(report / "report.html")
    assert key.index("torch") < key.index("tiny-numpy"), key
    assert "tiny-numpy" in (report / "report.md").read_text()


@pytest.fixture
def tiny_record(monkeypatch):
    """Step 2: the one record, as the recipe writes it in harness/impls_registry.py."""
    monkeypatch.syspath_prepend(str(REPO))  # the worker's path: the repository root first
    record = BuiltinImpl(
        "tiny", "tests.fixtures.tiny_vae", "TinyVAE", ("numpy",), "numpy", family="numpy", colour="#123456",
        int32_probe="tests.fixtures.planted_int32", baseline="bench.baselines.torch_loop",
        scenarios=("partial-last-batch",), device_oom=(r"tiny: the device is full",),
        host_oom=(r"tiny: the host is full",), optional=True, env={"TINY_THREADS": "1"})
    before = {"palette": "tiny" in IMPL_PALETTE, "family": "tiny" in IMPL_FRAMEWORK,
              "probes": "tiny" in PROBE_MODULES, "baselines": "tiny" in BASELINES,
              "scenario": "tiny" in SCENARIOS["partial-last-batch"].impls}
    assert not any(before.values()), before
    monkeypatch.setitem(BUILTIN, "tiny", record)
    return record


def test_step_2_one_record_puts_it_in_every_table(tiny_record, capsys):
    # where it lives and what a worker sets: found by name, as a built-in is
    cls = load_adapter_class("tiny")
    assert cls.__name__ == "TinyVAE" and row_label(cls, "tiny") == "tiny"
    assert check_plugin("tiny") is None and impl_label("tiny") == "tiny"
    assert impl_env("tiny") == {"TINY_THREADS": "1"} and is_installed("tiny")

    # the report: its colour, and its place after the built-ins that came before it
    assert IMPL_PALETTE["tiny"] == "#123456"
    assert impl_colors(["a-plugin", "tiny", "torch"])["tiny"] == "#123456"
    assert impl_rank("keras-tensorflow") < impl_rank("tiny") < impl_rank("a-plugin")

    # int32: its family's version from package metadata, and its probe module
    assert IMPL_FRAMEWORK["tiny"] == "numpy" and installed_version("numpy") == np.__version__
    assert "--impl tiny" in probe_hint("tiny")
    assert probe_module("tiny") == PROBE_MODULES["tiny"] == "tests.fixtures.planted_int32"

    # the textbook baseline, and the command line that offers it
    assert BASELINES["tiny"] == "bench.baselines.torch_loop"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", "--help"])
    assert "torch, flax, keras-jax, keras-torch, keras-tensorflow, tiny" in " ".join(capsys.readouterr().out.split())

    # leak scenarios: the one it names, with its twin, and no other
    assert "tiny" in check_scenario("partial-last-batch", "tiny").impls
    assert "tiny" in check_scenario("partial-last-batch-fixed", "tiny").impls
    with pytest.raises(ScenarioError, match="not 'tiny'"):
        check_scenario("torch-loss-total", "tiny")

    # failures: its framework's own out-of-memory words, and "No module named" for its framework
    error = {"status": "error", "error_type": "RuntimeError"}
    assert classify({**error, "message": "tiny: the device is full"}, 1, []).kind == "device_oom"
    assert classify({**error, "message": "tiny: the host is full"}, 1, []).kind == "host_oom"
    assert says_out_of_memory("tiny: the device is full")
    missing = {"status": "error", "error_type": "ModuleNotFoundError", "message": "No module named 'numpy'"}
    assert classify(missing, 1, []).kind == "framework_missing"
    assert "numpy" in frameworks_loaded()  # this process has numpy loaded, and numpy is now a framework


def test_step_2_an_optional_record_is_left_out_of_the_default_run_when_missing(tiny_record, monkeypatch):
    """``optional``: the default run drops an extra row whose framework is not installed, and says why."""
    from dataclasses import replace

    monkeypatch.setitem(BUILTIN, "tiny", replace(tiny_record, frameworks=("no_such_framework_xyz",)))
    plan = plan_default(3, "cpu", impls=None)
    assert "tiny" not in plan.impls and "torch" in plan.impls
    omitted = dict(plan.omitted_impls)
    assert "tiny" in omitted and "no_such_framework_xyz is not installed" in omitted["tiny"], omitted
    assert "pip install numpy" in omitted["tiny"]
