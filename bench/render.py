"""Terminal tables for the verbs (rich); the files the report builder writes live in ``reports/``."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from harness.diagnose.evidence import leak_label
from harness.diagnose.leak import power_line
from harness.row import parse_row
from harness.spec.schema import canonical_kmer_count

console = Console(width=None if sys.stdout.isatty() else 200)


def _fmt_rel(value: float | None, tol: float) -> str:
    if value is None:
        return "-"
    mark = "" if value <= tol else " [red]✗[/red]"
    return f"{value:.1e}{mark}"


def print_params(reports, kmer: int | None) -> None:
    for rep in reports:
        where = f"L={rep.input_length}" if kmer is None or rep.input_length != canonical_kmer_count(kmer) else f"k={kmer}"
        table = Table(title=f"{rep.spec} at {where}: expected {rep.expected_trainable:,} trainable, "
                            f"{rep.expected_non_trainable:,} non-trainable")
        for col in ("impl", "trainable", "non-trainable", "verdict"):
            table.add_column(col, justify="right" if col != "impl" else "left")
        for r in rep.rows:
            if r.error:
                table.add_row(r.impl, "-", "-", f"[red]failed: {r.error}[/red]")
                continue
            ok = r.trainable == rep.expected_trainable and r.non_trainable == rep.expected_non_trainable
            verdict = "equal" if ok else (f"[red]differs by {r.trainable - rep.expected_trainable:+,} / "
                                          f"{r.non_trainable - rep.expected_non_trainable:+,}[/red]")
            table.add_row(r.impl, f"{r.trainable:,}", f"{r.non_trainable:,}", verdict)
        console.print(table)
        console.print("verdict: " + ("[green]equal across all impls[/green]" if rep.equal else "[red]counts differ[/red]"))


def print_parity(reports) -> None:
    for rep in reports:
        t = rep.tol
        table = Table(title=f"parity of {rep.spec} in {rep.precision} against {rep.reference} (batch {rep.batch}; "
                            f"relative L2; tolerance {t.forward:.0e}"
                            + (f", loss {t.loss_bound:.0e}, gradients {t.grads_bound:.2g}" if t.loss is not None else "")
                            + f", after step {t.step:.0e}; against the float64 numpy reference {t.reference:.0e})")
        grads_col = "grads: all as one (worst tensor)" if t.grads_global else "grads (worst tensor)"
        for col in ("impl", "forward", "loss", grads_col, "after 1 Adam step (all weights; worst tensor)",
                    "float64 reference: forward / loss", "verdict"):
            table.add_column(col)
        for r in rep.rows:
            if r.error:
                table.add_row(r.impl, "-", "-", "-", "-", "-", f"[red]failed: {r.error}[/red]")
                continue
            loss64 = "- (BatchNorm)" if r.reference_loss is None else _fmt_rel(r.reference_loss, t.reference)
            table.add_row(r.impl, _fmt_rel(r.forward, t.forward), _fmt_rel(r.loss, t.loss_bound),
                          f"{_fmt_rel(r.grads_global, t.grads_bound)} ({r.worst_grad} {r.grads:.1e})" if t.grads_global
                          else f"{_fmt_rel(r.grads, t.grads_bound)} ({r.worst_grad})",
                          f"{_fmt_rel(r.after_step, t.step)} ({r.worst_after_step})",
                          f"{_fmt_rel(r.reference_forward, t.reference)} / {loss64}",
                          "[green]same model[/green]" if r.passed() else f"[red]differs: {r.why_not()}[/red]")
        console.print(table)
        near = max((r.near_eps_elements for r in rep.rows), default=0)
        if near:
            worst = max(r.near_eps_max_lr for r in rep.rows)
            console.print(f"  after-step column leaves out up to {near} weight elements whose gradient is within "
                          f"100 Adam epsilons of zero (Adam turns their rounding into any step within ±lr); "
                          f"their largest difference is {worst:.2f} lr (bound 2 lr)")
        zero = sorted({name for r in rep.rows for name in r.zero_grad})
        if zero:
            worst = max((v for r in rep.rows for v in r.zero_grad.values()), default=0.0)
            console.print(f"  zero-gradient tensors (a bias feeding a BatchNorm, an attention's key bias), checked to be "
                          f"zero up to rounding "
                          f"(worst {worst:.1e} of all gradients) and left out of the relative columns: "
                          f"{', '.join(zero)}")


def print_rows(rows) -> None:
    """The run's rows as one table: what a user reads right after ``bench run``. Rows are read typed
    (``harness.row``), so a failed row, which has no step statistics, cannot be misread as an ok one."""
    table = Table(title="results")
    for col in ("impl", "spec", "precision", "batch", "r", "status", "compile s", "median step ms", "IQR ms",
                "samples/s", "MFU", "peak mem MiB", "anon slope B/batch", "leak", "J/step"):
        table.add_column(col)
    typed = [parse_row(r) for r in rows]
    for r in typed:
        ident = r.identity
        head = (r.label, str(ident.spec_name), str(ident.precision), str(ident.batch), str(ident.repeat))
        st, mem, leak = r.timing.step_stats, r.memory, r.leak
        if not r.ok or st is None or mem is None or leak is None:
            table.add_row(*head, f"[red]{r.outcome.failure_kind or r.status}[/red]", "", "", "", "", "", "", "",
                          str(r.outcome.failure_message or "")[:60], "")
            continue
        mem_txt = f"{mem.peak_bytes / 2**20:.0f}" + ("*" if mem.cpu_standin else "") if mem.peak_bytes else "-"
        energy = f"{r.energy.joules_per_step:.3g}" if r.energy and r.energy.joules_per_step is not None else "-"
        mfu = r.flops.mfu_step
        table.add_row(*head, "ok", f"{r.compile.compile_s:.2f}", f"{st.median_s * 1e3:.2f}", f"{st.iqr_s * 1e3:.2f}",
                      f"{st.samples_per_s:.0f}", f"{mfu:.1%}" if mfu is not None else "-", mem_txt,
                      f"{leak.slope_bytes_per_batch or 0:,.0f}",
                      leak_text(r["leak"]), energy)
    console.print(table)
    if any(r.ok and r.memory and r.memory.cpu_standin for r in typed):
        console.print("* peak RSS (VmHWM) stands in for device memory on CPU")


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def print_preflight(rep, show_all: bool = True) -> None:
    table = Table(title=f"preflight: {rep.spec} in {rep.precision}, batch {rep.batch}" +
                  (f", eval batch {rep.eval_batch}" if rep.eval_batch else ""))
    for col in ("pass", "layer", "tensor", "shape", "elements", "bytes", "int32"):
        table.add_column(col, justify="right" if col in ("elements", "bytes") else "left")
    for t in rep.tensors:
        if not show_all and not t.overflows:
            continue
        b = rep.batch if t.pass_ == "train" else (rep.eval_batch or rep.batch)
        flag = ""
        if t.overflows:
            from harness.diagnose.preflight import wrap_int32

            safe = t.safe_batch(b)
            flag = f"[red]≥ 2^31: wraps to {wrap_int32(t.elements)}" + (f", safe batch ≤ {safe}" if safe else "") + "[/red]"
        table.add_row(t.pass_, t.layer, t.kind, "×".join(map(str, t.shape)), f"{t.elements:,}", _bytes(t.bytes), flag)
    console.print(table)
    e = rep.estimate
    if e.fitted_bytes is not None and e.factors:
        f = e.factors
        interval = (f"; {_bytes(e.interval_bytes[0])} to {_bytes(e.interval_bytes[1])} from the fit's held-out specs"
                    if e.interval_bytes else "")
        console.print(f"training memory estimate ({f['impl']} on {f['device']}): {_bytes(e.train_bytes)} = "
                      f"{f['f_state']:.2f} x state {_bytes(e.state_bytes)} + {f['f_activation']:.2f} x activations "
                      f"{_bytes(e.activation_bytes)} + {_bytes(f.get('f_program') or 0)} x {e.program_ops} ops "
                      f"+ runtime {_bytes(f.get('constant_used_bytes') or 0)} "
                      f"({f.get('constant_from', 'fitted')}){interval}")
    else:
        console.print(f"training memory estimate: {_bytes(e.train_bytes)} = state {_bytes(e.state_bytes)} "
                      f"(weights, grads, Adam m and v) + activations {_bytes(e.activation_bytes)} + "
                      f"workspace {_bytes(e.workspace_bytes)} (2 x largest activation or 2 x weights, the larger)")
    if rep.eval_batch:
        console.print(f"eval memory estimate: {_bytes(e.eval_bytes)}")
    avail = _bytes(rep.available_bytes) if rep.available_bytes else "unknown"
    console.print(f"{rep.device} memory available: {avail}; host RAM: {_bytes(rep.host_bytes or 0)}")
    n = len(rep.flags)
    if n:
        note = "" if rep.device == "gpu" else " (a warning on CPU; CUDA kernels would abort)"
        console.print(f"[red]{n} tensor(s) reach 2^31 elements{note}[/red]")
        print_int32(rep)
    for w in rep.warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    console.print("verdict: " + ("[green]fits[/green]" if rep.ok else f"[red]{'; '.join(rep.reasons)}[/red]"))


_BEHAVIOUR_STYLE = {"ok": "green", "unknown": "yellow", "raises": "red", "aborts": "red", "wrong": "red"}


def print_int32(rep) -> None:
    """Each overflowing tensor against each impl judged: what its framework does (``harness.diagnose.int32``)."""
    impls = list(rep.int32)
    table = Table(title=f"int32 past 2^31 on {rep.device}, per impl (facts: probe cache, shipped table, else unknown)")
    for col in ("pass", "layer", "tensor", "elements", "wraps to", "safe batch", *impls):
        table.add_column(col, justify="right" if col in ("elements", "wraps to", "safe batch") else "left")
    for k, t in enumerate(rep.flags):
        cells = []
        for impl in impls:
            e = rep.int32[impl][k]
            cells.append(f"[{_BEHAVIOUR_STYLE.get(e.behaviour, 'white')}]{e.behaviour}[/] ({e.op})")
        e0 = rep.int32[impls[0]][k]
        table.add_row(t.pass_, t.layer, t.kind, f"{t.elements:,}", str(e0.wraps_to), str(e0.safe_batch or "-"), *cells)
    console.print(table)
    sources = sorted({e.source for entries in rep.int32.values() for e in entries if e.behaviour != "unknown"})
    for src in sources:
        console.print(f"  source: {src}")
    for impl in impls:
        console.print(f"  {impl}: {rep.int32_verdict if rep.impl else _verdict(impl, rep.int32[impl])}")


def _verdict(impl, entries) -> str:
    from harness.diagnose.int32 import verdict

    return verdict(impl, entries)


def print_sweep(results) -> None:
    table = Table(title="largest trainable batch")
    for col in ("impl", "spec", "max ok batch", "first failing batch", "failure", "probes"):
        table.add_column(col)
    for r in results:
        probes = " ".join(f"{p['batch']}:{'ok' if p['outcome'] == 'ok' else p['outcome']}" for p in r.probes)
        table.add_row(r.impl, r.spec, str(r.max_ok or "-"), str(r.first_failure or "none up to max"),
                      r.failure_kind or "", probes)
    console.print(table)


def print_scenarios(scenarios) -> None:
    table = Table(title="leak scenarios: python -m bench run --scenario NAME (the NAME-fixed twin has the fix)")
    for col in ("scenario", "impls", "what it shows", "expected cause", "fix"):
        table.add_column(col, overflow="fold")
    for sc in scenarios:
        if sc.anti is None:
            table.add_row(sc.name, ", ".join(sc.impls), sc.what, sc.expected_cause, sc.fix)
    console.print(table)


def leak_text(leak: dict) -> str:
    """The verdict and what its series could see: "no leak above 3.4 KiB/batch", "inconclusive (could not rule
    out 23.2 KiB/batch in 12 steps)", "leak (confirmed)"."""
    label, power = leak_label(leak), power_line(leak)
    if label == "no leak" and power.startswith("no leak"):
        return power
    return f"{label} ({power})" if power and not label.startswith("leak") else label
