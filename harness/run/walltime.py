"""Where a cell's wall time goes, from process start to exit: what is measurement and what is not.

The worker announces each phase (``harness.run.cell``) and the launcher stamps every event with
its arrival time; the worker's own clock splits the first stretch into the framework import and
the model build. What comes before the first event is the interpreter start and the harness's
own imports. ``stats`` is the cell's statistics and verdicts after its last measured step;
``exit`` runs from the result file's write to the process's end (the framework's teardown).
"""

from __future__ import annotations

from typing import Any

#: the phases in the order a cell runs them (``harness.run.cell``)
PHASES = ("build", "compile", "warmup", "steady", "device_step", "leak", "heap", "memory", "stats", "confirm", "exit")
#: the worker's marker after its result is written (``harness.run.worker``): never where a cell failed
EXIT_PHASE = "exit"


def wall_breakdown(events: list[dict[str, Any]], wall_s: float, result: dict[str, Any] | None) -> dict[str, float]:
    """Seconds per stretch of a worker's life: ``process_start`` (interpreter and harness imports),
    ``import`` and ``build`` (the worker's own clock), then one entry per phase, and ``total``."""
    first: dict[str, float] = {}
    for e in events:
        if e.get("phase") in PHASES and "at_s" in e:
            first.setdefault(e["phase"], float(e["at_s"]))
    if not first:
        return {"total": round(wall_s, 3)}
    order = [p for p in PHASES if p in first]
    out: dict[str, float] = {"process_start": first[order[0]]}
    for here, after in zip(order, [*order[1:], None], strict=True):
        end = first[after] if after else wall_s
        out[here] = end - first[here]
    result = result or {}
    if "build" in out and isinstance(result.get("import_s"), (int, float)):
        # the worker's clock splits the build stretch: the framework import, then model and data
        imp = float(result["import_s"])
        run = float(result.get("runtime_s") or 0.0)  # the runtime warm-up (harness.run.phases.footprint)
        out["import"] = imp
        if run:
            out["runtime"] = run
        out["build"] = max(0.0, out["build"] - imp - run)
    out["total"] = wall_s
    return {k: round(v, 3) for k, v in out.items()}
