"""The report's Environment section: the machine, the matmul peak and which framework set it, a framework
far below the others on the same device (a finding), the framework versions, the wall time per cell and
every pinned setting.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import json

from harness.diagnose.leak import format_bytes
from harness.measure.peak import FAR_BELOW, peak_text, slow_frameworks
from reports.cells import nested, num
from reports.document import Doc

__all__ = ["WALL_PARTS", "device_text", "peak_findings", "section_environment"]


def _fingerprints(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        fp = r.get("fingerprint") or {}
        key = json.dumps([fp.get("hostname"), fp.get("cpu_model"), fp.get("gpus"), fp.get("git_commit")],
                         sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(fp)
    return out or [{}]


def device_text(rows: list[dict]) -> str:
    fp = _fingerprints(rows)[0]
    gpus = fp.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            names[g.get("name", "GPU")] = names.get(g.get("name", "GPU"), 0) + 1
        return ", ".join(f"{n}× {name}" if n > 1 else str(name) for name, n in names.items())
    return f"CPU: {fp.get('cpu_model') or 'unknown'}"


#: the stretches of a worker's life, in order (``harness.run.walltime``)
WALL_PARTS = ("process_start", "import", "build", "compile", "warmup", "steady", "device_step", "leak", "heap", "memory",
              "stats", "confirm", "exit")


def _wall_table(doc: Doc, rows: list[dict]) -> None:
    """Where each cell's wall time went: what is measurement (compile, warm-up, the timed loops) and what is not."""
    timed = [r for r in rows if isinstance(r.get("wall_breakdown"), dict) and len(r["wall_breakdown"]) > 1]
    if not timed:
        return
    parts = [p for p in WALL_PARTS if any(p in r["wall_breakdown"] for r in timed)]
    doc.h(3, "Wall time per cell")
    doc.details(f"Wall time of {len(timed)} cell{'s' if len(timed) != 1 else ''}")
    doc.p("Seconds from starting the cell's worker to its exit: the interpreter and harness imports "
          "(process start), the framework import, the model build, then each phase of the cell. Only compile, "
          "warm-up and the timed loops (steady, device step) are measurement; heap, memory and a leak's confirmation "
          "are the untimed probes after the timing; stats is the statistics and verdicts, and exit runs from the "
          "result's write to the process's end.")
    table = []
    for r in timed:
        wb = r["wall_breakdown"]
        label = f"{r.get('row') or r.get('impl')} {r.get('spec_name')} b={r.get('batch')} r{r.get('repeat', 0)}"
        table.append([label] + ["—" if wb.get(p) is None else f"{wb[p]:.1f}" for p in parts]
                     + [f"{wb.get('total', 0):.1f}"])
    doc.table(["cell"] + [p.replace("_", " ") for p in parts] + ["total"], table,
              right=set(range(1, len(parts) + 2)))
    doc.close()


def section_environment(doc: Doc, rows: list[dict]) -> None:
    """The machine, the framework versions, the wall time per cell and every pinned setting: one line in view,
    the rest collapsed in the HTML (complete in the Markdown)."""
    doc.h(2, "Environment")
    fps = _fingerprints(rows)
    fp = fps[0]
    doc.p(f"{device_text(rows)}, {fp.get('cpu_cores_logical', '?')} logical cores, "
          f"{format_bytes(num(fp.get('ram_bytes')))} RAM; commit `{str(fp.get('git_commit') or 'unknown')[:12]}`"
          + (" (working tree dirty)" if fp.get("git_dirty") else "") + ".")
    for finding in peak_findings(rows):
        doc.p(f"**Finding:** {finding}")
    doc.details("Machine")
    gpus = fp.get("gpus") or []
    info = [["device", device_text(rows)]]
    for g in gpus:
        info.append([f"GPU {g.get('index', '?')}", f"{g.get('name')}, {format_bytes(num(g.get('memory_bytes')))}, "
                     f"driver {g.get('driver', '?')}"])
    info += [
        ["CPU", str(fp.get("cpu_model") or "unknown")],
        ["cores", f"{fp.get('cpu_cores_logical', '?')} logical / {fp.get('cpu_cores_physical', '?')} physical"],
        ["RAM", format_bytes(num(fp.get("ram_bytes")))],
        ["host / platform", f"{fp.get('hostname', '?')} / {fp.get('platform', '?')}"],
        ["Python", str(fp.get("python", "?"))],
        ["matmul peak", _peak_line(rows)],
        ["git commit", f"`{fp.get('git_commit') or 'unknown'}`" + (" (working tree dirty)" if fp.get("git_dirty")
                                                                    else "")],
    ]
    doc.table(["", "value"], info)
    doc.close()
    if len(fps) > 1:
        doc.p("**Warning:** rows come from more than one machine or commit: "
              + "; ".join(f"{f.get('hostname')} {f.get('cpu_model')} `{f.get('git_commit')}`" for f in fps) + ".")
    versions: dict[str, dict] = {}
    for r in rows:
        v = nested(r, "fingerprint", "frameworks") or r.get("versions")
        if v and str(r.get("impl")) not in versions:
            versions[str(r.get("impl"))] = v
    impls = sorted({str(r.get("impl")) for r in rows})
    doc.h(3, "Framework versions per impl")
    doc.details(f"Versions of {len(impls)} impl{'s' if len(impls) != 1 else ''}")
    doc.table(["impl", "versions"], [[i, ", ".join(f"{k} {v}" for k, v in sorted(versions[i].items()))
                                      if i in versions else "n/a (no successful cell reported versions)"]
                                     for i in impls])
    doc.close()
    _wall_table(doc, rows)
    doc.h(3, "Pinned settings")
    doc.details("Every pinned setting and environment variable")
    doc.p("Every setting below is **pinned**: identical for every impl in this run (the spec's settings and the "
          "environment each worker is started with).")
    settings: dict[str, set] = {}
    for r in rows:
        for k, v in ((nested(r, "fingerprint", "pinned_settings") or {}) | (r.get("settings") or {})).items():
            settings.setdefault(k, set()).add(json.dumps(v, default=str))
    doc.table(["setting (pinned)", "value"], [[k, " / ".join(f"`{v}`" for v in sorted(vals))]
                                               for k, vals in sorted(settings.items())])
    env: dict[str, set] = {}
    for r in rows:
        for k, v in (nested(r, "fingerprint", "pinned_env") or {}).items():
            env.setdefault(k, set()).add(str(v))
    if env:
        doc.table(["environment variable (pinned)", "value"],
                  [[k, " / ".join(f"`{v}`" for v in sorted(vals))] for k, vals in sorted(env.items())])
    else:
        doc.p("No pinned environment variables were recorded.")
    doc.close()


def _peak_line(rows: list[dict]) -> str:
    """The run's measured float32 matmul peak (the MFU denominator), from the rows' fingerprints: the rate,
    how it was taken, and which framework set it."""
    texts = dict.fromkeys(peak_text({**p, "cached": False}) for p in _peaks(rows))
    return " / ".join(texts) if texts else "not measured in this run (no MFU)"


def _peaks(rows: list[dict]) -> list[dict]:
    """The distinct matmul peaks in the rows' fingerprints."""
    seen, out = set(), []
    for r in rows:
        p = nested(r, "fingerprint", "matmul_peak")
        if isinstance(p, dict):
            key = json.dumps({k: v for k, v in p.items() if k != "cached"}, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def peak_findings(rows: list[dict]) -> list[str]:
    """One sentence per framework whose own matmul is below ``FAR_BELOW`` x the fastest on the same
    device (``harness.measure.peak.slow_frameworks``): it bounds what that framework's rows can reach, and
    a user choosing a framework for this machine wants to know it. And one where a row's MFU passes 100%: the peak
    of its precision was then no ceiling for its kernels, and the MFU column cannot be read as a fraction."""
    out = []
    above = sorted({(str(r.get("row") or r.get("impl")), str(r.get("precision") or "fp32"), float(m))
                    for r in rows if (m := nested(r, "mfu", "step")) is not None and float(m) > 1.0},
                   key=lambda t: -t[2])
    if above:
        out.append("MFU above 100% in " + ", ".join(f"{i} ({p}, {m:.0%})" for i, p, m in above[:5])
                   + (f" and {len(above) - 5} more" if len(above) > 5 else "") + ": the matmul peak of that "
                   "precision, the best square product of the installed frameworks, was no ceiling for these rows' "
                   "kernels (a busy machine when it was timed: --remeasure-peak).")
    for p in _peaks(rows):
        for s in slow_frameworks(p):
            n = s.get("size")
            shape = f" ({n}x{n} A@B)" if n else ""
            rounds = s["rounds"]
            runs = f" (its rounds: {', '.join(f'{r:.3g}' for r in rounds)})" if len(rounds) > 1 else ""
            dtype = p.get("dtype") or "float32"
            out.append(f"{s['label']}'s own {dtype} matmul{shape} runs at {s['tflops']:.3g} TFLOP/s{runs} on "
                       f"{s.get('device') or 'this device'}, {s['ratio']:.2f}x {s['best_label']}'s "
                       f"{s['best_tflops']:.3g} TFLOP/s, below the {FAR_BELOW:.2f}x threshold. MFU is taken "
                       f"against the faster figure, so the rows that compute with {s['framework']} start from that "
                       f"handicap: part of any gap between them and the others is {s['framework']}'s matmul library "
                       f"on this device, not the model code.")
    return out
