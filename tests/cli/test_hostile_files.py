"""Only regular files are read: a FIFO, a directory, a non-UTF-8 spec or an .npz renamed .npy given where
vaebench reads a file gets one line naming the path and what it is (issue 27). A FIFO hung the command."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from fixtures.paths import REPO

from harness.data import DataError, open_npy
from harness.spec.layers import SpecError
from harness.spec.schema import load_spec


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_a_fifo_spec_or_data_file_is_refused_without_opening_it(fifo, tmp_path):
    with pytest.raises(SpecError, match=r"pipe.yaml is a FIFO \(named pipe\), not a regular file"):
        load_spec(fifo)
    data = tmp_path / "pipe.npy"
    os.mkfifo(data)
    with pytest.raises(DataError, match=r"pipe.npy is a FIFO \(named pipe\), not a regular file; pass a .npy file"):
        open_npy(data)


def test_a_directory_a_link_loop_and_non_utf8_text_are_one_line(tmp_path):
    folder = tmp_path / "spec.yaml"
    folder.mkdir()
    with pytest.raises(SpecError, match="spec.yaml is a directory, not a regular file"):
        load_spec(folder)
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(SpecError, match="loop.yaml is a symbolic link loop"):
        load_spec(loop)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin.yaml is not UTF-8 text \(byte 9\); save it as UTF-8"):
        load_spec(latin)


def test_an_npz_renamed_npy_is_one_line(tmp_path):
    path = tmp_path / "profiles.npy"
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros((4, 32), np.float32))
    with pytest.raises(DataError, match="profiles.npy is an .npz archive, not a .npy array"):
        open_npy(path)


@pytest.mark.worker
def test_the_command_line_given_a_fifo_answers_at_once(fifo, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", "torch", "--spec", str(fifo), "--kmer", "3",
                          "--results", str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "is a FIFO (named pipe)" in lines[0], out.stderr


def test_a_fifo_plugin_or_results_file_is_refused_and_one_in_a_results_dir_is_skipped(tmp_path, capsys):
    """A FIFO as the ``--impl`` file or as a results file is one line; one among a results dir's files is
    skipped with a line (``report DIR`` hung at its read)."""
    from harness.adapter import PluginError, load_adapter_class
    from harness.plugin_check import check_plugin
    from harness.store import load_rows

    plugin = tmp_path / "my_vae.py"
    os.mkfifo(plugin)
    with pytest.raises(PluginError, match=r"my_vae.py is a FIFO \(named pipe\); --impl takes path/to/file.py:Class"):
        load_adapter_class(f"{plugin}:MyVAE")
    assert "my_vae.py is a FIFO (named pipe)" in check_plugin(f"{plugin}:MyVAE")
    rows = tmp_path / "results" / "20261207-000000-aaaaaa.jsonl"
    rows.parent.mkdir()
    os.mkfifo(rows)
    with pytest.raises(FileNotFoundError, match=r"it is a FIFO \(named pipe\), not a file"):
        load_rows(rows)
    capsys.readouterr()
    assert load_rows(rows.parent) == []  # skipped, said on stderr, never opened
    assert capsys.readouterr().err.strip() == f"vaebench: skipped {rows}: a FIFO (named pipe), not result rows"


def test_an_unreadable_spec_and_a_data_link_loop_are_one_line(tmp_path, monkeypatch):
    """A spec the user may not read (``chmod 0``: root reads it anyway, so the read is made to fail as it does
    for other users) and a ``--data`` path that is a link to itself."""
    from pathlib import Path

    spec = tmp_path / "private.yaml"
    spec.write_text("name: x\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(SpecError, match="private.yaml cannot be read: Permission denied"):
        load_spec(spec)
    monkeypatch.undo()
    loop = tmp_path / "loop.npy"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="loop.npy is a symbolic link loop"):
        open_npy(loop)
