"""The built-in impls' records (``harness.impls_registry``): each names things that exist, and the
tables read from them say what the dozen separate tables said before them.

No framework is imported: modules are found by name (``importlib.util.find_spec``) and classes are
read off the files' syntax, as the parent process does.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bench.baselines import BASELINES
from harness.adapter import BUILTIN, module_bindings, parse_file
from harness.diagnose.failures import classify, says_out_of_memory
from harness.diagnose.int32 import IMPL_FRAMEWORK
from harness.diagnose.scenarios import SCENARIOS
from harness.impls_registry import framework_modules, impl_rank
from harness.run.int32_probe import PROBE_MODULES
from reports.plots import IMPL_PALETTE


def _source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    return Path(spec.origin)


def _classes(module: str) -> set[str]:
    path = _source(module)
    return {name for name, (node, _) in module_bindings(parse_file(str(path), path.stat().st_mtime_ns)).items()
            if type(node).__name__ == "ClassDef"}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_each_record_names_modules_and_classes_that_exist(name):
    b = BUILTIN[name]
    assert b.name == name
    assert b.cls in _classes(b.module), f"{b.module} defines no class {b.cls}"
    if b.int32_probe:
        assert "Ops" in _classes(b.int32_probe), f"{b.int32_probe} has no Ops class for probe-int32"
    if b.baseline:
        assert _source(b.baseline).is_file()
    assert re.fullmatch(r"#[0-9a-f]{6}", b.colour), b.colour
    for pattern in b.device_oom + b.host_oom:
        re.compile(pattern)


def test_colours_are_distinct_and_every_scenario_has_a_builder_and_an_impl():
    colours = [b.colour for b in BUILTIN.values()]
    assert len(set(colours)) == len(colours)
    from impls.scenarios import BUILDERS  # numpy only: each builder imports its framework when called

    named = {s for b in BUILTIN.values() for s in b.scenarios}
    anti = {n for n, s in SCENARIOS.items() if s.anti is None}
    assert named <= anti, f"records name unknown scenarios: {named - anti}"
    assert anti <= set(BUILDERS), f"no loop body in impls/scenarios.py for {anti - set(BUILDERS)}"
    assert all(SCENARIOS[n].impls for n in SCENARIOS), "a scenario no impl runs"


def test_the_tables_read_from_the_records_say_what_they_said_before_them():
    """The values of the separate tables at bd859c4, before they became views of the records."""
    assert list(BUILTIN) == ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]
    assert [impl_rank(i) for i in BUILTIN] == [0, 1, 2, 3, 4] and impl_rank("my-plugin") == 5
    assert dict(IMPL_FRAMEWORK) == {"torch": "torch", "flax": "jax", "keras-jax": "jax", "keras-torch": "torch",
                                    "keras-tensorflow": "tensorflow"}
    assert dict(PROBE_MODULES) == {"torch": "impls.int32_probe_torch", "keras-torch": "impls.int32_probe_torch",
                                   "flax": "impls.int32_probe_jax", "keras-jax": "impls.int32_probe_jax",
                                   "keras-tensorflow": "impls.int32_probe_tf"}
    assert dict(BASELINES) == {"torch": "bench.baselines.torch_loop", "flax": "bench.baselines.jax_loop",
                               "keras-jax": "bench.baselines.keras_fit", "keras-torch": "bench.baselines.keras_fit",
                               "keras-tensorflow": "bench.baselines.keras_fit"}
    assert dict(IMPL_PALETTE) == {"torch": "#d62728", "flax": "#1f77b4", "keras-jax": "#2ca02c",
                                  "keras-torch": "#9467bd", "keras-tensorflow": "#ff7f0e"}
    assert {n: s.impls for n, s in SCENARIOS.items() if s.anti is None} == {
        "torch-loss-total": ("torch",), "jax-jit-per-step": ("flax", "keras-jax"),
        "partial-last-batch": ("flax", "keras-jax", "keras-tensorflow"),
        "keras-tf-varying-batch": ("keras-tensorflow",)}
    assert all(SCENARIOS[n].impls == SCENARIOS[s.twin].impls for n, s in SCENARIOS.items() if s.twin)
    assert set(framework_modules()) == {"torch", "jax", "flax", "optax", "keras", "tensorflow"}


#: what each framework writes when memory runs out, as the classifier met it before the records held it
DEVICE_OOM = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
              "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes",
              "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor with shape",
              "CUDA_ERROR_OUT_OF_MEMORY: out of memory", "cudaErrorMemoryAllocation",
              "Out of memory allocating 1073741824 bytes"]
HOST_OOM = ["MemoryError", "terminate called after throwing an instance of 'std::bad_alloc'",
            "OSError: [Errno 12] Cannot allocate memory",
            "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
            "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 3.00 GiB", "failed to allocate memory"]


@pytest.mark.parametrize("kind,message", [("device_oom", m) for m in DEVICE_OOM] + [("host_oom", m) for m in HOST_OOM])
def test_each_frameworks_out_of_memory_message_is_still_named(kind, message):
    assert says_out_of_memory(message)
    error = {"status": "error", "error_type": "RuntimeError", "message": message}
    assert classify(error, 1, [], device="gpu").kind == kind
    assert classify(None, -6, ["some line", message, "Fatal Python error: Aborted"], device="gpu").kind == kind
