"""Naming what broke: every cell ends as a row with one failure kind (or ``ok``).

The kinds are what the user needs to act on: a device OOM means a smaller
batch, an int32 overflow means the batch passed 2^31 elements in one tensor
and no amount of memory will help, a host OOM means the data pipeline. The
classifier reads, in order: the worker's own exception, the exit signal, the
parent's timeout and memory guard, then the stderr tail (where aborts such as
TensorFlow's ``work_element_count`` check leave their only trace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from harness.impls_registry import framework_modules, oom_patterns

KINDS = (
    "ok", "device_oom", "host_oom", "int32_overflow", "nan_loss", "compile_error", "timeout",
    "crash_signal", "framework_missing", "skipped", "error",
    # a cell whose Slurm job ended without its row (``harness.run.slurm.collect``), by Slurm's state
    "slurm_out_of_memory", "slurm_timeout", "slurm_node_fail", "slurm_cancelled", "slurm_died",
)

#: what the user should do next, per kind (shown in the report's diagnosis)
ADVICE = {
    "device_oom": "lower the batch size, or check the preflight estimate against free device memory",
    "host_oom": "the worker ran out of host RAM: stream batches from a memmap and lower the batch size",
    "int32_overflow": "a tensor passed 2^31 elements; lower the batch below the preflight's safe batch",
    "nan_loss": "the loss became NaN or inf; check the data range and learning rate",
    "compile_error": "the framework could not build or compile this model; see the stderr tail",
    "timeout": "the cell exceeded its time budget; raise --timeout or lower --steps",
    "crash_signal": "the worker died by a signal; see the stderr tail",
    "framework_missing": "install the framework named in the message",
    "skipped": "not run: see the reason",
    "error": "an unexpected error; see the message",
    "slurm_out_of_memory": "Slurm killed the job past its --mem: pass a larger --slurm-mem, or lower the batch",
    "slurm_timeout": "the job passed its Slurm time limit: raise --slurm-time (or --timeout, which sets it)",
    "slurm_node_fail": "the node failed under the job: --resume runs the cell again, on another node if it is down",
    "slurm_cancelled": "the job was cancelled (scancel, or preempted): --resume runs the cell again",
    "slurm_died": "the job ended without the cell's row: see Slurm's state and the job's log named in the message",
}

_INT32 = re.compile(
    r"work_element_count >= 0|numel\(\) <= INT32_MAX|INT32_MAX|32-bit index|canUse32BitIndexMath|"
    r"illegal memory access|integer overflow|exceeds 2\^31|2147483647",
    re.IGNORECASE,
)
#: out-of-memory messages of no one framework: CUDA's own error names, which any framework on CUDA passes
#: on, and Python's, the C++ runtime's, the C library's and numpy's; each framework's own are on its impl's
#: record (``harness.impls_registry``)
CUDA_OOM = (r"CUDA_ERROR_OUT_OF_MEMORY", r"cudaErrorMemoryAllocation")
HOST_OOM = (r"MemoryError", r"std::bad_alloc", r"Cannot allocate memory", r"Unable to allocate",
            r"failed to allocate memory")


@lru_cache(maxsize=8)
def _either(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(patterns), re.IGNORECASE)


def _device_oom() -> re.Pattern:
    """Device memory exhausted, in the words of CUDA or of any built-in impl's framework."""
    return _either(oom_patterns("device") + CUDA_OOM)


def _host_oom() -> re.Pattern:
    return _either(HOST_OOM + oom_patterns("host"))


def says_out_of_memory(text: str) -> bool:
    """True where an error message reports device or host memory exhausted (probe-int32's ``oom``)."""
    return bool(_device_oom().search(text) or _host_oom().search(text))


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def classify(result: dict | None, returncode: int | None, stderr_tail: list[str], timed_out: bool = False,
             memory_limit_hit: bool = False, phase: str | None = None, device: str = "gpu") -> Failure:
    """One failure kind and a one-line message for a finished worker.

    ``stderr_tail`` should be the worker's whole stderr: an abort message can sit
    above a long stack dump. On a CPU (``device``) there is no device memory, so
    an allocator's "resource exhausted" is host memory.
    """
    failure = _classify(result, returncode, stderr_tail, timed_out, memory_limit_hit, phase)
    if device == "cpu" and failure.kind == "device_oom" and "cuda" not in failure.message.lower():
        return Failure("host_oom", failure.message)  # XLA's RESOURCE_EXHAUSTED on a CPU is host RAM
    return failure


def _classify(result: dict | None, returncode: int | None, stderr_tail: list[str], timed_out: bool,
              memory_limit_hit: bool, phase: str | None) -> Failure:
    stderr = "\n".join(stderr_tail)
    device_oom, host_oom = _device_oom(), _host_oom()
    if result is not None and result.get("status") == "ok":
        return Failure("ok", "")  # measured in full, even if the interpreter then hung on exit
    if timed_out:
        return Failure("timeout", f"no result within the time budget (last phase: {phase or 'start'})")
    if memory_limit_hit:
        return Failure("host_oom", "worker passed its host memory limit and was stopped")
    if result is not None and result.get("status") == "error":
        etype, message = result.get("error_type", "Error"), result.get("message", "")
        text = f"{etype}: {message}"
        tb = result.get("traceback", "")
        if etype == "FrameworkMissing" or (etype == "ModuleNotFoundError" and _is_framework(message)):
            return Failure("framework_missing", message)
        if etype == "NonFiniteLoss":
            return Failure("nan_loss", message)
        if etype in ("SkipCell", "PrecisionUnsupported"):  # the build cannot run this cell as asked: no wrong row
            return Failure("skipped", message)
        if etype == "WrongParamCount":  # built and compiled fine, but not the spec's model
            return Failure("error", message)
        if _INT32.search(text) or _INT32.search(tb):
            return Failure("int32_overflow", text)
        if device_oom.search(text) or device_oom.search(tb):
            return Failure("device_oom", text)
        if host_oom.search(text) or etype == "MemoryError":
            return Failure("host_oom", text)
        if phase in ("build", "compile"):
            return Failure("compile_error", text)
        return Failure("error", text)
    # no result: the worker died hard
    last = _last_meaningful(stderr_tail)
    if _INT32.search(stderr):
        return Failure("int32_overflow", _matching_line(stderr_tail, _INT32) or last)
    if device_oom.search(stderr):
        return Failure("device_oom", _matching_line(stderr_tail, device_oom) or last)
    if host_oom.search(stderr):
        return Failure("host_oom", _matching_line(stderr_tail, host_oom) or last)
    if returncode is not None and returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name == "SIGKILL":
            return Failure("host_oom", "killed by SIGKILL without a timeout: most likely the kernel's OOM killer")
        detail = crash_detail(stderr_tail)
        return Failure("crash_signal", f"worker died by {name} in phase {phase or 'start'}"
                       + (f": {detail}" if detail else ""))
    return Failure("error", f"worker exited with status {returncode} and no result" + (f": {last}" if last else ""))


def _is_framework(message: str) -> bool:
    """A ``No module named 'X...'`` about a module some built-in impl imports (its record's ``frameworks``)."""
    return any(f"'{m}" in message for m in framework_modules())


#: faulthandler's dump around a crash: headers, frames and the loaded-modules trailer, none of which says why
_DUMP = re.compile(r'^\s*(Extension modules: |Current thread 0x|Thread 0x|Stack \(most recent call first\)|'
                   r'File ".*", line \d+ in |<no Python frame>|Python runtime state: |Fatal Python error: )')
_FRAME = re.compile(r'^\s*File ".*", line \d+ in ')
_ERRORISH = re.compile(r"error|fatal|check failed|abort|terminate called|what\(\)|exception|assert|"
                       r"segmentation fault|illegal|failed", re.IGNORECASE)


def crash_detail(lines: list[str]) -> str:
    """The most telling lines of a worker that died by a signal: the last error line a framework
    wrote above faulthandler's dump, the dump's ``Fatal Python error: ...`` line and the first
    frame of the crashing thread's stack; never the dump's ``Extension modules: ...`` trailer."""
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error: ")), None)
    above = lines if fatal is None else lines[:fatal]
    framework = next((line.strip() for line in reversed(above)
                      if line.strip() and not _DUMP.match(line) and _ERRORISH.search(line)), "")
    parts = [framework[:200]] if framework else []
    if fatal is not None:
        parts.append(lines[fatal].strip())
        frame = _first_frame(lines[fatal:])
        if frame:
            parts.append(f"at {frame[:160]}")
    return "; ".join(parts)[:400] if parts else _last_meaningful(lines)


def _first_frame(lines: list[str]) -> str:
    """The innermost frame of the crashing thread ("Current thread ..."), else of the first stack shown."""
    headers = [i for i, line in enumerate(lines) if line.startswith("Current thread 0x")] or \
        [i for i, line in enumerate(lines) if line.startswith(("Thread 0x", "Stack (most recent call first)"))]
    start = headers[0] + 1 if headers else 0
    return next((line.strip() for line in lines[start:] if _FRAME.match(line)), "")


def _last_meaningful(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.strip() and not _DUMP.match(line):
            return line.strip()[:300]
    return ""


def _matching_line(lines: list[str], pattern: re.Pattern) -> str:
    for line in reversed(lines):
        if pattern.search(line):
            return line.strip()[:300]
    return ""
