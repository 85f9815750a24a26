"""The CPU stand-in for device memory: a cell's training peak from the process's peak RSS.

Framework-free arithmetic, called by the cell's ``stats`` phase (``harness.run.phases.stats.memory_figures``).

**What is subtracted.** VmHWM is the peak of the whole resident set: anonymous pages,
file-backed pages (shared libraries, a memmap'd data file) and shared memory. The stand-in
keeps the model's part of the anonymous pages:

    peak = VmHWM - file-backed pages at the peak - the framework's import footprint
           (RssAnon after import, before any model) - what the harness holds
           (the synthetic data, the batches in hand, an injected leak)

**The negative peaks it fixes.** The file-backed pages used to be read from
``/proc/self/status`` at the very end of the cell, after the row's own bookkeeping had
imported more modules (the leak verdict, the step statistics, NVML): their shared libraries
were mapped after the peak, never part of it, and were subtracted all the same. On the
plug-in example adapter of docs/design.md (``tests/fixtures/planted.py:NumpyVAE``, dense k=3 b=32) RssFile was
26.9 MB at the memory phase and 54.8 MB at the end, so 28 MB that the peak never held came
off a peak of a few MB: −20 MB. On the framework rows of the committed CPU reference run the
same late imports took 24–26 MiB off every peak. Now the file-backed figure is the last one
sampled before the memory phase (``RssSampler``, one read per step), for the compile peak the
one sampled right after the compile step. File-backed pages only grow while a cell runs (more
library code is faulted in), so this never subtracts pages the peak did not contain.

**Floor.** Whatever noise remains (a heap trimmed below the import footprint), a row never
reports less than the model's weights and Adam's two moments (12 bytes a trainable
parameter, 4 a non-trainable one). Where the floor applies the row says so
(``peak_floor_applied``) and keeps the figure it replaced (``*_unfloored_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: bump when the arithmetic changes; rows carry it as ``memory.standin_method``
#: (1: file-backed pages read at the end of the cell; 2: read before the peak's phase; 3: the import footprint
#: includes the harness's own scipy.stats, 45 MiB the leak phase used to import before the memory phase, which
#: every CPU peak of method 2 counted as the model's: ``harness.run.phases.footprint``)
STANDIN_METHOD = 3


def weights_and_state_bytes(trainable: int, non_trainable: int = 0) -> int:
    """float32 weights of every parameter plus Adam's m and v of the trainable ones."""
    return 12 * int(trainable) + 4 * int(non_trainable)


@dataclass
class StandinPeak:
    training_bytes: int
    compile_bytes: int
    training_unfloored_bytes: int
    compile_unfloored_bytes: int
    floor_bytes: int
    file_at_peak_bytes: int
    file_at_compile_bytes: int

    @property
    def floor_applied(self) -> bool:
        return self.training_unfloored_bytes < self.floor_bytes or self.compile_unfloored_bytes < self.floor_bytes

    def fields(self) -> dict[str, Any]:
        """The row's ``memory`` fields beside ``training_peak_rss_bytes`` / ``compile_peak_rss_bytes``."""
        return {
            "standin_method": STANDIN_METHOD,
            "file_rss_at_peak_bytes": self.file_at_peak_bytes,
            "file_rss_at_compile_bytes": self.file_at_compile_bytes,
            "weights_and_state_bytes": self.floor_bytes,
            "peak_floor_applied": self.floor_applied,
            "training_peak_unfloored_bytes": self.training_unfloored_bytes,
            "compile_peak_unfloored_bytes": self.compile_unfloored_bytes,
        }


def cpu_standin_peak(peak_rss: int, compile_hwm: int, file_samples: list[int], import_anon: int, *,
                     held: int, shmem: int, floor_bytes: int, fallback_file: int = 0) -> StandinPeak:
    """The training and compile peaks of one cell (see the module docstring).

    ``file_samples``: RssFile after each step (``RssSampler.file``; the first is the compile
    step's, the last the one before the memory phase); ``fallback_file`` where there are none.
    ``shmem``: RssShmem (System V / POSIX shared memory the process maps; 0 in every row so far).
    """
    file_peak = int(file_samples[-1]) if file_samples else int(fallback_file)
    file_compile = int(file_samples[0]) if file_samples else int(fallback_file)
    training = int(peak_rss) - file_peak - int(shmem) - int(import_anon) - int(held)
    compiled = int(compile_hwm) - file_compile - int(shmem) - int(import_anon) - int(held)
    return StandinPeak(max(training, floor_bytes), max(compiled, floor_bytes), training, compiled,
                       int(floor_bytes), file_peak, file_compile)


def held_bytes(batch: int, width: int, memory_steps: int, steps_per_window: int, synthetic_rows: int = 256,
               memmap: bool = False, leak_bytes: int = 0) -> int:
    """What the harness holds during the peak's phase: the data, the batches in hand, an injected leak.

    The synthetic data is ``synthetic_rows`` rows, tiled up to one batch (``harness.data.BatchSource``);
    a memmap'd file holds none (its pages are file-backed). One batch is in hand in the memory phase,
    a prefetched window without it.
    """
    rows = 0 if memmap else synthetic_rows * max(1, -(-batch // synthetic_rows))
    in_hand = 1 if memory_steps else steps_per_window
    return (rows + in_hand * batch) * width * 4 + leak_bytes
