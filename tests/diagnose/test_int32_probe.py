"""probe-int32 on a CPU at a lowered boundary: planted numpy ops that are wrong, raise and abort past it
are found as such, the real frameworks' chunked comparison says ``ok``, and a probe the host cannot
hold is skipped with the reason."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from fixtures.paths import FIXTURES

from harness.diagnose.int32 import PROBE_CACHE, load_probe_rows, op_fact
from harness.measure.int32_check import BOUNDARY_ENV, geometry
from harness.run import int32_probe
from harness.run.int32_probe import ProbeRequest, probe_impl

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

PLANTED = str(FIXTURES / "planted_int32.py")
SMALL = "65536"  # 2^16: a probe is a few hundred KiB


def _past(rows, op, pass_="forward"):
    return next(r for r in rows if r["op"] == op and r["pass"] == pass_ and r["size"] == "past")


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setenv(BOUNDARY_ENV, SMALL)


def test_planted_wrong_raises_and_aborts_are_told_apart(small, tmp_path):
    rows = probe_impl(ProbeRequest(PLANTED, "cpu", ops=("relu", "max_pool1d", "upsample1d", "conv1d")), tmp_path)
    assert all(r["behaviour"] == "ok" for r in rows if r["size"] == "below")
    assert _past(rows, "relu")["behaviour"] == "ok"
    wrong = _past(rows, "max_pool1d")
    assert wrong["behaviour"] == "wrong" and "past the boundary" in wrong["detail"]
    raises = _past(rows, "upsample1d", "forward+backward")
    assert raises["behaviour"] == "raises" and "numeric_limits<int32_t>" in raises["detail"]
    aborts = _past(rows, "conv1d")
    assert aborts["behaviour"] == "aborts" and aborts["signal"] == "SIGABRT"
    assert "work_element_count >= 0" in aborts["detail"]
    # the abort killed one probe: the op's next probe ran in a fresh worker
    assert _past(rows, "conv1d", "forward+backward")["behaviour"] == "aborts"
    assert [r["size"] for r in rows if r["op"] == "conv1d"] == ["below", "past", "below", "past"]
    # every row is cached with the device, version and boundary it was measured at
    cached = load_probe_rows(tmp_path)
    assert len(cached) == len(rows) == 16
    assert all(r["device"] == "cpu" and r["boundary"] == 65536 and r["framework_version"] for r in cached)
    assert all(r["elements"] >= 65536 for r in cached if r["size"] == "past")
    # a probe at a lowered boundary is never evidence for preflight at 2^31
    assert op_fact(PLANTED, "conv1d", "forward", "cpu", cached[0]["framework_version"], cached).behaviour == "unknown"


def test_cli_json_and_one_line_errors(small, tmp_path):
    env_cmd = [sys.executable, "-m", "bench", "probe-int32", "--device", "cpu", "--results", str(tmp_path)]
    out = subprocess.run([*env_cmd, "--impl", PLANTED, "--ops", "upsample1d", "--json"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {(r["size"], r["behaviour"]) for r in rows} == {("below", "ok"), ("past", "raises")}
    assert (tmp_path / PROBE_CACHE).exists()
    for bad, needle in ((["--impl", "pytorch"], "pytorch"), (["--impl", "torch", "--ops", "conv2d"], "conv2d"),
                        (["--impl", "torch", "--device", "tpu"], "tpu")):
        cmd = [c for c in env_cmd if c not in ("--device", "cpu")] if "--device" in bad else env_cmd
        out = subprocess.run([*cmd, *bad], capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr
        assert "Traceback" not in out.stderr


def test_a_probe_the_host_cannot_hold_is_skipped(monkeypatch, tmp_path):
    """At the real boundary a float32 tensor is 8 GiB: on a small host the probe is skipped, not run."""
    monkeypatch.delenv(BOUNDARY_ENV, raising=False)
    monkeypatch.setattr(int32_probe, "_host_available", lambda: 4 * 2**30)
    rows = probe_impl(ProbeRequest(PLANTED, "cpu", ops=("relu",)), tmp_path)
    assert len(rows) == 4 and all(r["behaviour"] == "skipped" and "host RAM" in r["detail"] for r in rows)
    assert _past(rows, "relu")["elements"] == geometry("relu", "past", 2**31).elements > 2**31


def test_geometry_straddles_the_boundary():
    for limit in (65536, 2**31):
        past, below = geometry("conv1d", "past", limit), geometry("conv1d", "below", limit)
        assert below.elements < limit < past.elements <= limit + past.per_row  # indices past it exist
        first = past.check_from * past.per_row
        assert first < limit and past.rows - past.check_from <= 3  # the compared rows are few
    assert geometry("conv1d", "past", 2**31).per_row == 8192 * 64  # conv-final's first conv output, per sample


@pytest.mark.parametrize("impl,ops", [("torch", ("conv1d", "upsample1d")), ("flax", ("conv1d",))])
def test_real_framework_chunked_comparison_says_ok(small, tmp_path, impl, ops):
    framework = {"torch": "torch", "flax": "jax"}[impl]
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    rows = probe_impl(ProbeRequest(impl, "cpu", ops=ops), tmp_path)
    assert len(rows) == 4 * len(ops)
    assert all(r["behaviour"] == "ok" for r in rows), [(r["op"], r["behaviour"], r.get("detail")) for r in rows]
    backward = _past(rows, ops[0], "forward+backward")
    assert {"y", "dx", f"dw:{'weight' if impl == 'torch' else 'kernel'}"} <= set(backward["max_rel_diff"])
    assert all(v < 1e-3 for v in backward["max_rel_diff"].values())
    assert backward["framework_version"] and backward["device"] == "cpu"
