"""The ``worker`` marker, enforced: a test that starts a Python process must say so.

Tests that start a worker, the CLI or a Keras child take seconds to minutes; the rest take milliseconds.
``pytest -m "not worker"`` runs the quick part alone, so a test that starts a Python process without the
marker would slip into it. While a test runs (its fixtures' setup included), ``subprocess.Popen`` notes
every Python child it starts; an unmarked test that started one fails at teardown, naming the command.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: the test now running (setup, call and teardown), and the Python commands each unmarked test started
_running: dict[str, object] = {"item": None}
_unmarked: dict[str, list[str]] = {}
_popen_init = subprocess.Popen.__init__


def _is_python(args) -> bool:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args or [""])
    first = os.fsdecode(argv[0]).split()[0] if os.fsdecode(argv[0]).strip() else ""
    return first == sys.executable or os.path.basename(first).startswith("python")


def _noting_init(self, args, *rest, **kwargs):
    item = _running["item"]
    if item is not None and _is_python(args) and item.get_closest_marker("worker") is None:
        command = " ".join(map(os.fsdecode, [args] if isinstance(args, (str, bytes)) else args))
        _unmarked.setdefault(item.nodeid, []).append(command[:160])
    _popen_init(self, args, *rest, **kwargs)


subprocess.Popen.__init__ = _noting_init


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running["item"] = item
    try:
        return (yield)
    finally:
        _running["item"] = None


@pytest.fixture(autouse=True)
def _workers_are_marked(request):
    yield
    started = _unmarked.pop(request.node.nodeid, None)
    if started:
        pytest.fail(f"{request.node.nodeid} started a Python process without the `worker` marker "
                    f"(add `pytestmark = pytest.mark.worker` to its module): {started[0]}", pytrace=False)
