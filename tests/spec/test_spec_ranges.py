"""A spec's numbers and switches are checked in the parent, so every build gets the same answer.

Before, Flax trained ``lr: -0.001`` and reported "ok" while PyTorch's Adam refused it; ``lr: "fast"``,
``beta1: 5``, ``seed: "abc"`` and ``loss.beta: .nan`` reached a worker and exited 1 (issue 27)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import yaml
from fixtures.paths import REPO

from harness.spec.layers import SpecError
from harness.spec.presets import preset
from harness.spec.schema import VAESpec, canonical_kmer_count


def _dense(**sections) -> dict:
    d = preset("dense", canonical_kmer_count(3)).to_dict()
    for section, fields in sections.items():
        if isinstance(fields, dict):
            d[section] = {**d.get(section, {}), **fields}
        else:
            d[section] = fields
    return d


@pytest.mark.parametrize("section,field,value,words", [
    ("optimizer", "lr", -0.001, "optimizer.lr must be > 0, got -0.001"),
    ("optimizer", "lr", 0, "optimizer.lr must be > 0, got 0"),
    ("optimizer", "lr", "fast", "optimizer.lr must be a finite number > 0, got 'fast'"),
    ("optimizer", "beta1", 5, "optimizer.beta1 must be >= 0 and < 1, got 5"),
    ("optimizer", "beta2", 1.0, "optimizer.beta2 must be >= 0 and < 1, got 1.0"),
    ("optimizer", "eps", math.inf, "optimizer.eps must be a finite number > 0, got inf"),
    ("loss", "beta", math.nan, "loss.beta must be a finite number >= 0, got nan"),
    ("loss", "beta", -1, "loss.beta must be >= 0, got -1"),
    ("settings", "seed", "abc", "settings.seed must be an integer from 0 to 4294967295, got 'abc'"),
    ("settings", "seed", 2**32, "settings.seed must be an integer from 0 to 4294967295, got 4294967296"),
    ("settings", "seed", True, "settings.seed must be an integer"),
    ("settings", "batch_norm_momentum", 1.5, "settings.batch_norm_momentum must be >= 0 and < 1, got 1.5"),
    ("settings", "batch_norm_epsilon", 0.0, "settings.batch_norm_epsilon must be > 0, got 0.0"),
    ("settings", "tf32", "yes", "settings.tf32 must be true or false, got 'yes'"),
    ("settings", "leaky_relu_slope", None, "settings.leaky_relu_slope must be a finite number, got None"),
])
def test_a_field_of_the_wrong_type_or_out_of_range_is_one_line(section, field, value, words):
    with pytest.raises(SpecError) as err:
        VAESpec.from_dict(_dense(**{section: {field: value}}))
    message = str(err.value)
    assert words in message and "\n" not in message, message


def test_a_layer_argument_of_the_wrong_type_is_one_line_with_its_path():
    d = _dense()
    d["encoder"][2] = {"type": "leaky_relu", "negative_slope": "x"}
    with pytest.raises(SpecError, match=r"encoder\[2\] \(leaky_relu\)\.negative_slope must be a finite number, "
                                        r"got 'x'"):
        VAESpec.from_dict(d)
    d = preset("resvae", canonical_kmer_count(4)).to_dict()
    inner = next(i for i, x in enumerate(d["encoder"]) if x["type"] == "residual")
    d["encoder"][inner]["layers"].insert(0, {"type": "group_norm", "groups": 1, "epsilon": -1e-6})
    with pytest.raises(SpecError, match=rf"encoder\[{inner}\]\.layers\[0\] \(group_norm\)\.epsilon must be > 0"):
        VAESpec.from_dict(d)


def test_the_edges_that_are_allowed_stay_allowed():
    spec = VAESpec.from_dict(_dense(optimizer={"beta1": 0, "lr": 1}, loss={"beta": 0},
                                    settings={"seed": 2**32 - 1, "leaky_relu_slope": -0.5}))
    assert (spec.optimizer.beta1, spec.loss.beta, spec.settings.seed) == (0, 0, 2**32 - 1)


def test_schema_version_as_a_string_says_to_write_the_number():
    with pytest.raises(SpecError, match=r"schema_version '1' is not supported \(write the number 1, not a string\)"):
        VAESpec.from_dict(_dense(schema_version="1"))
    with pytest.raises(SpecError, match=r"schema_version 2 is not supported \(this vaebench reads 1\)"):
        VAESpec.from_dict(_dense(schema_version=2))
    with pytest.raises(SpecError, match="schema_version True"):
        VAESpec.from_dict(_dense(schema_version=True))


@pytest.mark.worker
def test_negative_lr_is_refused_before_any_worker_in_every_build(tmp_path):
    """The case that split the builds: one line and exit 2 from ``run`` over all five, no row written."""
    path = tmp_path / "neg-lr.yaml"
    path.write_text(yaml.safe_dump(_dense(name="neg-lr", optimizer={"lr": -0.001})))
    impls = "torch,flax,keras-jax,keras-torch,keras-tensorflow"
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", impls, "--spec", str(path), "--kmer", "3",
                          "--batch", "4", "--steps", "2", "--no-progress", "--results", str(tmp_path / "results")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "optimizer.lr must be > 0, got -0.001" in lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
