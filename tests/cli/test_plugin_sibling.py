"""A plug-in file imports the module beside it, as ``python plugin.py`` would let it (issue 25): the
parent's check and the worker both put the file's folder on the path. Before, the parent refused it
with "No module named 'mymodel'"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fixtures.paths import REPO

pytestmark = pytest.mark.worker


def test_a_plugin_importing_its_sibling_module_runs(tmp_path):
    plugins, cwd, results = tmp_path / "plugins", tmp_path / "elsewhere", tmp_path / "results"
    plugins.mkdir()
    cwd.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "planted.py", plugins / "mymodel.py")
    (plugins / "plugin.py").write_text("from mymodel import NumpyVAE\n\n\n"
                                       "class SiblingVAE(NumpyVAE):\n"
                                       "    \"\"\"The planted numpy VAE, reached through the module beside this file.\"\"\"\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), VAEBENCH_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", f"{plugins / 'plugin.py'}:SiblingVAE",
                           "--kmer", "3", "--steps", "4", "--batch", "4", "--no-progress", "--no-preflight",
                           "--results", str(results)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for f in results.rglob("*.jsonl") for line in f.read_text().splitlines() if line]
    cells = [r for r in rows if r.get("status")]
    assert [r["status"] for r in cells] == ["ok"], cells
    assert "SiblingVAE" in cells[0]["impl"]
