"""Preflight per impl: int32 judged by what each framework really does past 2^31 elements.

The user's case (conv-final at k=7, eval batch 5,000) against the shipped table of
measured facts. Everything here is arithmetic and a table: no framework, no GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.diagnose.int32 import PROBE_CACHE, shipped_facts, version_in
from harness.diagnose.preflight import preflight
from harness.run.matrix import matrix_cells, plan_default
from harness.spec.presets import preset

CONV_FINAL = ["preflight", "--spec", "conv-final", "--kmer", "7", "--batch", "64", "--eval-batch", "5000", "--gpu",
              "--device-memory", "80GB"]
#: versions inside the shipped table's ranges, so the checks do not depend on what is installed here
MEASURED = {"torch": "2.11.0", "jax": "0.11.2", "tensorflow": "2.15.0"}


def _cli(*extra: str, results: str = "no-such-results-dir") -> tuple[int, dict, str]:
    out = subprocess.run([sys.executable, "-m", "bench", *CONV_FINAL, "--results", results, "--json", *extra],
                         capture_output=True, text=True)
    return out.returncode, json.loads(out.stdout), out.stderr


def _rep(impl: str | None, **kw):
    return preflight(preset("conv-final", 8192), 64, 5000, device="gpu", device_memory=80 * 10**9,
                     int32_applies=True, impl=impl, results_dir="no-such-results-dir", versions=MEASURED, **kw)


def test_torch_blames_the_decoder_upsample_not_the_conv():
    rep = _rep("torch")
    by_layer = {e.layer: e for e in rep.int32["torch"]}
    assert by_layer["encoder.1"].behaviour == "ok" and by_layer["encoder.2"].behaviour == "ok"
    up = by_layer["decoder.9"]
    assert (up.behaviour, up.op, up.tensor) == ("raises", "upsample1d", "upsampled output")
    assert up.wraps_to == -1673527296 and up.safe_batch == 4095 and "h200" in up.source
    assert not rep.ok and len(rep.reasons) == 1
    assert "decoder.9" in rep.reasons[0] and "upsample1d" in rep.reasons[0] and "encoder.1" not in rep.reasons[0]


def test_flax_reports_no_int32_failure():
    rep = _rep("flax")
    assert rep.ok and rep.reasons == []
    behaviours = {e.layer: e.behaviour for e in rep.int32["flax"]}
    assert behaviours["encoder.1"] == behaviours["encoder.2"] == "ok"
    assert behaviours["decoder.9"] == "unknown"  # nobody measured JAX's repeat past 2^31
    assert any("decoder.9" in w and "probe-int32" in w for w in rep.warnings)


def test_keras_tensorflow_aborts_on_the_encoder_conv():
    rep = _rep("keras-tensorflow")
    conv = next(e for e in rep.int32["keras-tensorflow"] if e.layer == "encoder.1")
    assert (conv.behaviour, conv.op, conv.elements, conv.wraps_to) == ("aborts", "conv1d", 2_621_440_000, -1673527296)
    assert not rep.ok and "aborts" in rep.reasons[0] and "encoder.1" in rep.reasons[0]


@pytest.mark.parametrize("impl,code,needle", [
    ("torch", 3, "decoder.9"), ("flax", 0, None), ("keras-tensorflow", 3, "encoder.1"),
])
@pytest.mark.worker
def test_cli_json_contract_per_impl(impl, code, needle):
    rc, data, err = _cli("--impl", impl)
    assert rc == code, err
    assert {e["impl"] for e in data["int32"]} == {impl}
    for e in data["int32"]:
        assert {"layer", "tensor", "elements", "wraps_to", "behaviour", "safe_batch", "source"} <= set(e)
    assert isinstance(data["verdict"], str) and data["impl"] == impl
    failing = [e for e in data["int32"] if e["behaviour"] in ("raises", "aborts", "wrong")]
    if needle is None:
        assert not failing and "no int32 failure" in data["verdict"]
    else:
        assert [e["layer"] for e in failing] == [needle] and needle in data["verdict"]
        assert len(err.strip().splitlines()) == 1 and needle in err
    if impl == "keras-tensorflow":
        assert failing[0]["elements"] == 2_621_440_000 and failing[0]["wraps_to"] == -1673527296
        assert failing[0]["behaviour"] == "aborts"


@pytest.mark.worker
def test_without_impl_every_impl_side_by_side():
    rc, data, _ = _cli()
    assert rc == 3  # no framework named: any overflow stops the check, as before
    assert {e["impl"] for e in data["int32"]} == {"torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"}
    assert "torch raises at decoder.9" in data["reason"] and "keras-tensorflow aborts at encoder.1" in data["reason"]
    out = subprocess.run([sys.executable, "-m", "bench", *CONV_FINAL, "--flags-only"], capture_output=True, text=True)
    assert "keras-tensorflow" in out.stdout and "aborts" in out.stdout and "raises" in out.stdout


@pytest.mark.worker
def test_bad_impl_is_one_line():
    out = subprocess.run([sys.executable, "-m", "bench", *CONV_FINAL, "--impl", "pytorch"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "pytorch" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_cached_probe_outranks_the_table(tmp_path):
    """A probe of this torch version saying the upsample runs beats the table's 'raises'."""
    row = {"impl": "torch", "framework": "torch", "framework_version": "2.11.0", "device": "gpu", "op": "upsample1d",
           "pass": "forward", "size": "past", "boundary": 2**31, "behaviour": "ok", "below": "ok", "at": "2026-11-26T13:00:00",
           "device_name": "NVIDIA H200"}
    rows = [row, {**row, "op": "conv_transpose1d"}]  # the upsample's output is read by a transposed conv
    (tmp_path / PROBE_CACHE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = preflight(preset("conv-final", 8192), 64, 5000, device="gpu", device_memory=80 * 10**9,
                    int32_applies=True, impl="torch", results_dir=str(tmp_path), versions=MEASURED)
    up = next(e for e in rep.int32["torch"] if e.layer == "decoder.9")
    assert up.behaviour == "ok" and up.source.startswith("bench probe-int32") and rep.ok
    # another version's probe does not count
    other = preflight(preset("conv-final", 8192), 64, 5000, device="gpu", device_memory=80 * 10**9,
                      int32_applies=True, impl="torch", results_dir=str(tmp_path), versions={"torch": "2.12.0"})
    assert next(e for e in other.int32["torch"] if e.layer == "decoder.9").behaviour == "raises"


def test_shipped_table_says_where_each_fact_comes_from():
    facts = shipped_facts()
    assert {f.framework for f in facts} == {"torch", "jax", "tensorflow"}
    assert all(f.source and f.device == "gpu" and f.versions for f in facts)
    assert version_in("2.13.0+cpu", ">=2.11") and not version_in("0.10.2", ">=0.11.2") and version_in(None, ">=9")


def test_gpu_matrix_skips_only_the_impls_that_fail():
    """conv-final at B=4096 is exactly 2^31 elements: torch's upsample raises there; flax runs (or is unknown)."""
    plan = plan_default(7, "gpu", impls=["torch", "flax", "keras-tensorflow"], specs=["conv-final"], batches=[4096])
    cells = matrix_cells(plan, 7, steps=5, repeats=1, timeout_s=60, device_memory=80 * 10**9)
    skip = {c.impl: cells.preflight(c) for c in cells.cells}
    assert skip["torch"]["skip"] and "upsample1d" in skip["torch"]["reason"]
    assert not skip["flax"]["skip"]
    assert skip["keras-tensorflow"]["skip"] and "conv1d aborts" in skip["keras-tensorflow"]["reason"]


def test_the_matrix_reads_the_probe_cache_of_its_own_results_dir(tmp_path):
    """Probes stored under ``--results DIR`` count for that run's matrix, not only under ./results."""
    from harness.diagnose.int32 import installed_version

    version = installed_version("torch")
    if version is None:
        pytest.skip("torch is not installed: its probe rows would not match a version")
    row = {"impl": "torch", "framework": "torch", "framework_version": version, "device": "gpu", "op": "upsample1d",
           "pass": "forward+backward", "size": "past", "boundary": 2**31, "behaviour": "ok", "below": "ok",
           "at": "2026-11-26T13:00:00", "device_name": "NVIDIA H200"}
    (tmp_path / PROBE_CACHE).write_text("".join(json.dumps(r) + "\n" for r in [row, {**row, "op": "conv_transpose1d"}]))
    plan = plan_default(7, "gpu", impls=["torch"], specs=["conv-final"], batches=[4096])
    cached = matrix_cells(plan, 7, steps=5, repeats=1, timeout_s=60, device_memory=80 * 10**9, results_dir=str(tmp_path))
    assert not cached.preflight(cached.cells[0])["skip"]
    table = matrix_cells(plan, 7, steps=5, repeats=1, timeout_s=60, device_memory=80 * 10**9,
                         results_dir=str(tmp_path / "empty"))
    assert table.preflight(table.cells[0])["skip"]
