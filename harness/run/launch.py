"""Starting worker processes: a fresh interpreter per task, environment first.

Every framework is imported in a worker, never in the parent, and each worker
gets a brand-new interpreter (``subprocess``, i.e. spawn semantics, no fork):
leftovers of an earlier framework cannot sit in the same process, and a
worker that aborts (TensorFlow's int32 check raises SIGABRT), segfaults or is
killed by the kernel takes only its own cell down.

The environment is complete before the interpreter starts, so settings such as
``KERAS_BACKEND`` or ``XLA_PYTHON_CLIENT_PREALLOCATE`` are in force before any
framework reads them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness.adapter import impl_env
from harness.measure.probes import proc_status
from harness.run.task import Task
from harness.spec.schema import Settings, fairness_env

#: how many trailing stderr lines each result keeps
STDERR_TAIL_LINES = 30
#: seconds the parent keeps reading after the worker exits while something it started still holds its stdout
#: (a plug-in that forked ``sleep 600`` held its cell until --timeout, issue 27); then that group is killed
LEFTOVER_GRACE_S = 1.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerOutcome:
    returncode: int | None
    result: dict[str, Any] | None
    stderr_tail: list[str]
    wall_s: float
    timed_out: bool = False
    memory_limit_hit: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    #: every stderr line, for the classifier (a deep stack dump can push a
    #: framework's abort message out of the stored tail)
    stderr_all: list[str] = field(default_factory=list)

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None


def run_worker(
    task: Task,
    impl: str,
    settings: Settings,
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    memory_limit_bytes: int | None = None,
) -> WorkerOutcome:
    """Run ``python -m harness.run.worker`` on one task and collect what it left behind.

    The worker writes its result to a JSON file only when it finishes; progress
    events arrive on stdout as JSON lines (``on_event`` sees each one). stderr is
    kept as a tail for the failure row.
    """
    env = dict(os.environ)
    env.update(fairness_env(settings))
    env.update(impl_env(impl))
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        task = replace(task, impl=impl, result_path=str(Path(tmp) / "result.json"), scratch=tmp)
        task_path = Path(tmp) / "task.json"
        task_path.write_text(json.dumps(task.to_json()))
        stderr_path = Path(tmp) / "stderr.txt"
        events: list[dict[str, Any]] = []
        start = time.perf_counter()
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness.run.worker", str(task_path)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True,
                cwd=str(REPO_ROOT), start_new_session=True,
            )
            timed_out = False
            guard = _MemoryGuard(proc.pid, memory_limit_bytes)
            try:
                timed_out = _pump(proc, start, start + timeout_s, events, on_event, guard)
            except KeyboardInterrupt:
                _kill(proc)
                raise
            finally:
                if proc.poll() is None:
                    _kill(proc)
        wall = time.perf_counter() - start
        all_lines = stderr_path.read_text(errors="replace").splitlines()
        tail = list(deque(all_lines, maxlen=STDERR_TAIL_LINES))
        result_file = Path(task.result_path)
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        return WorkerOutcome(proc.returncode, result, tail, wall, timed_out, guard.hit, events,
                             stderr_all=all_lines)


class _MemoryGuard:
    """Kills a worker whose resident memory (with its children) passes a limit.

    An address-space rlimit would be simpler but JAX and TensorFlow reserve far
    more virtual memory than they touch, so RSS is what is policed: anonymous
    plus shared-memory RSS, not file-backed pages (a streamed memmap, shared
    libraries), which the kernel can drop and which are no sign of running out.
    """

    def __init__(self, pid: int, limit: int | None) -> None:
        self.limit, self.hit = limit, False
        self._proc = None
        if limit:
            import psutil

            try:
                self._proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self._proc = None

    def over(self) -> bool:
        if not self._proc:
            return False
        import psutil

        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
            statuses = [proc_status(p.pid) for p in procs]
        except (psutil.Error, OSError):
            return False
        rss = sum(s.get("RssAnon", 0) + s.get("RssShmem", 0) for s in statuses)
        self.hit = rss > self.limit
        return self.hit


def _pump(proc: subprocess.Popen, start: float, deadline: float, events: list, on_event, guard: _MemoryGuard) -> bool:
    """Read JSON-line events until the worker exits or the deadline passes; each event is stamped
    with the seconds since the worker was started (``at_s``), for the wall-time breakdown."""
    import selectors

    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    buffer = ""
    exited_at: float | None = None
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            _kill(proc)
            return True
        if guard.over():
            _kill(proc)
            return False
        for key, _ in sel.select(timeout=min(remaining, 0.5)):
            chunk = os.read(key.fd, 65536).decode(errors="replace")
            if not chunk:
                sel.unregister(key.fileobj)
                proc.wait()
                return False
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.startswith("{"):
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    event["at_s"] = round(time.perf_counter() - start, 4)
                    events.append(event)
                    if on_event:
                        on_event(event)
        if proc.poll() is not None:
            if not sel.get_map():
                return False
            # the worker is gone but its stdout is still open: something it started (a plug-in's forked child)
            # holds the pipe. Its events had a second to arrive; then its group goes, not the cell's timeout
            exited_at = exited_at or time.perf_counter()
            if time.perf_counter() - exited_at > LEFTOVER_GRACE_S:
                _kill_group(proc.pid)
                return False


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker's whole process group (frameworks start helper threads/processes)."""
    _kill_group(proc.pid)
    proc.wait()


def _kill_group(pgid: int) -> None:
    """SIGKILL a worker's process group: the worker was started in a session of its own, so the group holds
    only it and what it started."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
