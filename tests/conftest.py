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


def _argv(args) -> list[str]:
    """Popen's ``args`` as strings: a list, or one command line (``shell=True``) split on spaces."""
    if isinstance(args, (str, bytes, os.PathLike)):
        return os.fsdecode(args).split()
    return [os.fsdecode(a) for a in args or []]


def _noting_init(self, args, *rest, **kwargs):
    item, argv = _running["item"], _argv(args)
    is_python = bool(argv) and (argv[0] == sys.executable or os.path.basename(argv[0]).startswith("python"))
    if item is not None and is_python and item.get_closest_marker("worker") is None:
        _unmarked.setdefault(item.nodeid, []).append(" ".join(argv)[:160])
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


#: the modules whose shared fixtures start several processes for minutes (the parity workers, two at a time; the
#: three Keras children) go first: pytest-xdist's ``load`` scheduling hands each worker a first chunk of
#: consecutive tests in collection order (a quarter of its share), so these fixtures run at the start, with the
#: many short tests filling the cores beside and after them, instead of one long fixture running alone at the end
#: (collected by folder, they started mid-run). With ``nox -s tests``' three workers a first chunk is shorter than
#: parity's and the Keras modules' tests together, so the second worker starts the Keras children while the first
#: starts parity's
LONG_FIXTURES_FIRST = ("tests/impls/test_parity.py", "tests/impls/keras/")


#: where the tests that compare two step times live: ``nox -s tests`` runs ``pytest -m timing`` on this folder
#: alone, after the parallel run (collecting the whole tree for two tests cost 5.7 s), so a timing test
#: elsewhere would run in neither pass; collection fails on one
TIMING_TESTS = "tests/measure/"


def pytest_collection_modifyitems(config, items):
    astray = [i.nodeid for i in items if i.get_closest_marker("timing") and not i.nodeid.startswith(TIMING_TESTS)]
    if astray:
        raise pytest.UsageError(f"{astray[0]} is marked `timing` outside {TIMING_TESTS}: `nox -s tests` runs the "
                                f"timing tests from that folder alone, so move it there")

    def first(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, prefix in enumerate(LONG_FIXTURES_FIRST) if path.startswith(prefix)),
                    len(LONG_FIXTURES_FIRST))

    items.sort(key=first)  # stable: the order inside each group is collection order
