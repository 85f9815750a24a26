"""``bench baseline``: the harness's step times against each framework's textbook loop.

Speed is not asserted here (``--tolerance`` is set out of reach); the fields, the ABBA pairing,
the parameter-count check and the worker dispatch are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from bench.baselines import BASELINES
from bench.baselines.common import UnsupportedSpec, check_output, schedule
from bench.overhead import BaselineError, measure_baseline
from harness.adapter import BUILTIN, is_installed
from harness.run.launch import run_worker
from harness.run.schedule import steps_per_window, warmup_steps
from harness.run.task import BaselineTask, task_from_json
from harness.spec.params import count_params
from harness.spec.presets import resolve_spec

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker


def test_verb_reports_both_ratios_with_paired_cis_and_the_param_check():
    out = subprocess.run([sys.executable, "-m", "bench", "baseline", "--impl", "torch", "--spec", "dense", "--kmer", "3",
                          "--batch", "16", "--steps", "20", "--repeats", "2", "--tolerance", "1000", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (o,) = json.loads(out.stdout)
    assert o["impl"] == "torch" and o["baseline"] == "torch_loop"
    expected = count_params(resolve_spec("dense", kmer=3)).trainable
    assert o["params"] == {"spec": expected, "baseline": expected, "harness": expected, "equal": True}
    assert len(o["baseline_s"]) == len(o["step_s"]) == len(o["device_step_s"]) == 2
    for name in ("step", "device_step"):
        assert o[f"{name}_ratio"] > 0 and len(o[f"{name}_ratio_ci95"]) == 2
    assert "95% CI" in out.stderr and "= the spec" in out.stderr


def test_a_baseline_that_builds_another_model_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "vaebench_wrong_baseline.py").write_text(textwrap.dedent("""
        def run(spec, kmer, batch, steps, warmup=None, steps_per_window=None):
            return {"median_s": 0.001, "window_times_s": [0.001], "params": 12345}
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker's path: the repo root, then this
    monkeypatch.setitem(BUILTIN, "torch", replace(BUILTIN["torch"], baseline="vaebench_wrong_baseline"))
    with pytest.raises(BaselineError, match="12,345 trainable parameters.*not the same model"):
        measure_baseline("torch", resolve_spec("dense", kmer=3), 3, 8, steps=4, repeats=1, timeout_s=120)


@pytest.mark.parametrize("impl", ["flax", "keras-jax"])
def test_each_baseline_builds_the_spec_in_a_worker(impl):
    if not is_installed(impl):
        pytest.skip(f"{impl} is not installed")
    spec = resolve_spec("dense", kmer=3)
    task = BaselineTask(module=BASELINES[impl], spec=spec.to_dict(), kmer=3, batch=8, steps=4, warmup=1,
                        steps_per_window=2)
    out = run_worker(task, impl, spec.settings, timeout_s=240)
    assert out.result and out.result["status"] == "ok", out.stderr_tail[-10:]
    assert out.result["params"] == count_params(spec).trainable
    assert len(out.result["window_times_s"]) == 2 and out.result["median_s"] > 0


def test_baseline_task_round_trips_and_the_window_rule_is_the_harness_rule():
    task = BaselineTask(module="bench.baselines.torch_loop", spec={}, kmer=3, batch=2, steps=4, warmup=3)
    assert task_from_json(json.loads(json.dumps(task.to_json()))) == task
    for steps in (5, 40, 200, 1000):
        assert schedule(steps, None, None) == (1 + warmup_steps(steps), steps_per_window(steps))


def test_conv_specs_and_unknown_impls_are_refused_in_the_parent():
    with pytest.raises(UnsupportedSpec, match=r"encoder\[0\] is reshape"):
        check_output(resolve_spec("conv-final", kmer=5))
    out = subprocess.run([sys.executable, "-m", "bench", "baseline", "--impl", "torch", "--spec", "conv-final",
                          "--kmer", "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "fully connected" in out.stderr


#: run in a child: the baseline's ``run`` in ``PRECISION`` at k=3, with the dtype each dense layer computes in
#: (its output's) and holds its weights in noted as the step runs or is traced; prints both and the result, as JSON
_DENSE_DTYPES = textwrap.dedent("""
    import json, sys
    from harness.spec.presets import resolve_spec
    module, precision = sys.argv[1], sys.argv[2]
    seen = set()
    if module == "torch_loop":
        import torch
        def hook(mod, args, out):
            if isinstance(mod, torch.nn.Linear):
                seen.add((str(out.dtype).removeprefix("torch."), str(mod.weight.dtype).removeprefix("torch.")))
        torch.nn.modules.module.register_module_forward_hook(hook)
    elif module == "jax_loop":
        from flax import nnx
        call = nnx.Linear.__call__
        def traced(self, x):
            out = call(self, x)
            seen.add((str(out.dtype), str(self.kernel.get_value().dtype)))
            return out
        nnx.Linear.__call__ = traced
    else:
        import keras
        call = keras.layers.Dense.call
        def traced(self, x, *a, **k):  # inside call the policy autocasts the kernel: its dtype is read after
            out = call(self, x, *a, **k)
            seen.add((keras.backend.standardize_dtype(out.dtype), self))
            return out
        keras.layers.Dense.call = traced
    import importlib
    run = importlib.import_module("bench.baselines." + module).run
    spec = resolve_spec("dense", kmer=3).with_settings(precision=precision)
    res = run(spec, 3, 16, 6, warmup=2, steps_per_window=2)
    seen = {(out, w if isinstance(w, str) else w.kernel.dtype) for out, w in seen}
    print(json.dumps({"dense": sorted(seen), **res}))
""")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("impl", ["torch", "flax", "keras-jax"])
def test_each_baseline_trains_its_dense_layers_in_the_spec_precision(impl, precision):
    """bf16: the framework's documented mixed precision (autocast, a module dtype, the mixed_bfloat16 policy)
    computes every dense layer in bfloat16 over float32 weights, and the loss stays finite; fp32 stays float32."""
    if not is_installed(impl):
        pytest.skip(f"{impl} is not installed")
    module = BASELINES[impl].rsplit(".", 1)[1]
    env = {**os.environ, **BUILTIN[impl].env, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run([sys.executable, "-c", _DENSE_DTYPES, module, precision], capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    compute = "bfloat16" if precision == "bf16" else "float32"
    assert res["dense"] == [[compute, "float32"]], res["dense"]
    assert math.isfinite(res["final_loss"]) and res["params"] == count_params(resolve_spec("dense", kmer=3)).trainable
    assert len(res["window_times_s"]) == 3 and res["median_s"] > 0
