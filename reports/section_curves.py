"""The report's "Training curves" section: per spec, the curves of every impl from the same weights, batches
and noise (``python -m bench curves``, stored under ``<results>/curves/``), the verdict table beside them
(``harness.diagnose.curves``: parted, final reconstruction, NaN, KL collapse), and the tolerances used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.document import Doc
from reports.formatting import slugify
from reports.plots import plot_curves


def _verdict_row(v: dict[str, Any]) -> list[str]:
    precision = v.get("precision", "fp32")
    if v.get("error"):
        return [v["impl"], precision, "-", "-", "-", "-", "-", f"failed: {v['error']}"]
    pct = lambda x: "-" if x is None else f"{x:.2%}"  # noqa: E731
    other = precision != "fp32"
    verdict = ("**differs**" if not v.get("passed") else "trains as fp32 does" if other else "trains the same")
    return [v["impl"], precision, pct(v.get("final_recon")),
            "never" if v.get("parted_at") is None else str(v["parted_at"]),
            pct(v.get("max_part")), "none" if v.get("nonfinite_at") is None else str(v["nonfinite_at"]),
            "-" if v.get("kl_max_dim") is None else f"{v['kl_max_dim']:.3g}"
            + (" **collapsed**" + ("" if v.get("kl_collapse_reference") or not other else " (fp32 did not)")
               if v.get("kl_collapse") else ""),
            verdict]


def section_curves(doc: Doc, records: list[dict[str, Any]], out_dir: Path, colors: dict, plots: bool = True) -> None:
    """Nothing when the run stored no curves."""
    if not records:
        return
    doc.h(2, "Training curves")
    tol = records[0].get("tolerances", {})
    doc.p("Every impl trains the same steps from the same canonical weights, on the same batches in the same order "
          "and with the same noise, each training row seen once unless the table says otherwise; the reconstruction "
          "and KL are read on fixed held-out rows every few steps "
          f"(python -m bench curves). Against the reference: the curves have *parted* once the training loss, smoothed "
          f"over {tol.get('smooth_steps', '?')} steps, differs by more than {tol.get('part', 0):.3%}; *final recon* "
          f"is the held-out reconstruction over the last {tol.get('final_fraction', 0):.0%} of the steps (tolerance "
          f"{tol.get('final_recon', 0):.3%}). "
          + (f"Both tolerances are {tol.get('floor_factor', 5):g} times the gaps of the reference's own second run from "
             "weights one float32 ulp apart (the noise floor, its row below). " if tol.get("source") == "floor" else
             "No noise-floor run: fixed tolerances. ")
          + (f"A curve in another precision (bf16) is judged against the float32 reference by where it ends: final "
             f"recon within {tol.get('final_recon_other_precision', 0.01):.0%}, no NaN, no KL collapse that float32 "
             "does not show; its *parted at* step is where it left float32's path, and stands beside it. "
             if any(r.get("precision", "fp32") != "fp32" for r in records) else "")
          + "The KL has *collapsed* when no latent element holds "
          f"{tol.get('kl_collapse_nats', '?')} nats after the first {tol.get('collapse_after', 0):.0%} of the steps "
          "while the reconstruction still falls.")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("spec_name"), r.get("kmer"), r.get("batch"), r.get("steps")), []).append(r)
    for (name, kmer, batch, steps), recs in groups.items():
        title = f"{name}" + (f", k={kmer}" if kmer is not None else "") + f", batch {batch}, {steps} steps"
        doc.h(3, f"Curves: {title}")
        rel = f"plots/curves_{slugify(title)}.png"
        if plots and plot_curves(title, [r["curve"] for r in recs], colors, out_dir / rel):
            doc.img(rel, f"training loss, held-out reconstruction and KL per step for {title}, one line per impl")
        ref = recs[0]["verdict"].get("reference", "?")
        collapsed = [r["verdict"]["impl"] for r in recs if r["verdict"].get("kl_collapse")]
        parted = [r["verdict"]["impl"] for r in recs if not r["verdict"].get("passed")]
        doc.p(f"Against **{ref}**: " + (f"**differs**: {', '.join(parted)}. " if parted else "every impl trains the same. ")
              + (f"**KL collapse** in {', '.join(collapsed)}: the latent carries nothing while the reconstruction "
                 "still falls (raise the latent's share: a lower beta, KL annealing)." if collapsed
                 else "No KL collapse."))
        doc.table(["impl", "precision", "final recon vs ref", "parted at step", "largest gap", "NaN/inf at",
                   "top latent KL (nats)", "verdict"], [_verdict_row(r["verdict"]) for r in recs])
        doc.p(_data_line(recs))


def _data_line(recs: list[dict[str, Any]]) -> str:
    """What the curves trained on, how many latent elements carry information, and any stop at the target."""
    data = recs[0].get("training_rows") or {}
    parts = []
    if data:
        parts.append(f"Trained on {data.get('source', '?')}: {data.get('train_rows', 0):,} rows, "
                     f"{data.get('epochs', 0):g} epoch(s) at this batch; judged on {data.get('held_out_rows', 0):,} "
                     f"held-out rows ({data.get('scaled', '?')}).")
    active = {r["curve"]["impl"]: r["curve"]["kl_active"][-1] for r in recs if (r.get("curve") or {}).get("kl_active")}
    if active:
        parts.append("Latent elements holding more than 0.01 nats at the end: "
                     + ", ".join(f"{impl} {n}" for impl, n in active.items()) + ".")
    stopped = [r for r in recs if (r.get("curve") or {}).get("stop_at_recon") is not None]
    for r in stopped:
        got = r.get("steps_to_target") or {}
        parts.append(f"{r['curve']['impl']} stopped at the first probe meeting the target "
                     f"({r['curve']['stop_at_recon']:,.4g}): "
                     + (f"step {got['steps']:,}." if got.get("steps") is not None else "not reached."))
    return " ".join(parts) or "No record of the training rows (a record from before issue 23)."
