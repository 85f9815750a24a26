"""The report answers at a glance (issue 15): the answer sentence and the summary figure inside the first screen
of a 1,280x800 window with no horizontal scroll (headless Chromium), every message said once, and one colour per
built-in impl in every run."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest
from fixtures.browser import INSTALL_HINT, find_chromium
from fixtures.rows import failed_row, ok_row, write_jsonl

from reports.build import build_report
from reports.plots import IMPL_PALETTE, impl_colors

CHROMIUM = find_chromium()
SKIP_MESSAGE = "would need 30.2 GB of 24.5 GB cpu memory"

#: appended to a copy of the page: writes where the answer and the summary figure start, and how wide the page
#: scrolls, into the DOM that --dump-dom prints (once at once, again on load, when the images have their size)
_PROBE = """<script>
function probe(){var a=document.querySelector('#answer p'),f=document.getElementById('summary-figure');
var o=document.getElementById('layout-probe')||document.body.appendChild(document.createElement('pre'));
o.id='layout-probe';o.hidden=true;o.textContent=JSON.stringify({answer:a?a.getBoundingClientRect().top+scrollY:null,
figure:f?f.getBoundingClientRect().top+scrollY:null,figure_h:f?f.getBoundingClientRect().height:null,
scroll_width:document.documentElement.scrollWidth,body_width:document.body.scrollWidth,inner_width:innerWidth});}
probe();window.addEventListener('load',probe);
</script>"""


def multi_batch_run() -> list[dict]:
    """Two specs, three batches of dense, five impls, one out-of-memory failure."""
    rows = []
    for impl, base in (("torch", 10.0), ("flax", 8.0), ("keras-jax", 9.0), ("keras-torch", 14.0),
                       ("keras-tensorflow", 12.0)):
        for batch, scale in ((64, 1.0), (256, 3.2), (1024, 11.0)):
            if impl == "keras-torch" and batch == 1024:
                rows.append(failed_row(impl, batch, "device_oom", "CUDA out of memory. Tried to allocate 8.0 GiB"))
            else:
                rows.append(ok_row(impl, batch, base * scale, 0.1 * base * scale, peak_mib=300 * scale))
        rows.append(ok_row(impl, 32, 3 * base, 0.3 * base, spec="conv"))
    return rows


def all_skip_one_preset_run() -> list[dict]:
    impls = ("torch", "flax", "keras-jax")
    rows = [ok_row(i, b, m * b / 64, 0.2, peak_mib=400) for i, m in zip(impls, (10.0, 8.0, 12.0), strict=True)
            for b in (64, 512)]
    rows += [failed_row(i, 8, "skipped", SKIP_MESSAGE, spec="conv", status="skipped",
                        preflight={"skip": True, "reason": SKIP_MESSAGE, "estimate_bytes": 30 * 2**30})
             for i in impls]
    return rows


def _chromium_layout(page: Path, tmp: Path) -> dict:
    probe_page = tmp / "probe.html"
    probe_page.write_text(page.read_text().replace("</body>", _PROBE + "\n</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
           "--window-size=1280,800", "--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="layout-probe" hidden="">(.*?)</pre>', proc.stdout, re.S)
    assert m, proc.stdout[-2000:]
    return json.loads(html.unescape(m.group(1)))


def test_answer_and_summary_figure_on_the_first_screen_without_horizontal_scroll(tmp_path):
    if CHROMIUM is None:
        pytest.skip(f"{INSTALL_HINT}: layout not checked")
    results = write_jsonl(tmp_path / "20261123-170000-abcdef.jsonl", multi_batch_run())
    out = build_report([results], out_root=tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "**dense, k=5** on NVIDIA H100 80GB HBM3: use **flax at batch" in md
    assert "**out of memory**: keras-torch at dense, k=5, batch 1,024" in md
    layout = _chromium_layout(out / "report.html", tmp_path)
    assert layout["inner_width"] == 1280, layout  # the window the checks are about
    assert layout["answer"] is not None and 0 < layout["answer"] < 800, layout
    assert layout["figure"] is not None and layout["figure"] < 800, layout
    assert layout["scroll_width"] <= 1280 and layout["body_width"] <= 1280, layout


def _prose_lines(md: str) -> list[str]:
    """Paragraphs and list items: what a reader reads (table rows and headings repeat by design)."""
    return [line for line in md.splitlines() if line.strip() and not line.startswith(("|", "#", "![", "<sub>", "*"))]


def test_no_message_is_said_twice_when_every_impl_skips_the_same_preset(tmp_path):
    out = build_report([write_jsonl(tmp_path / "r.jsonl", all_skip_one_preset_run())], out_root=tmp_path / "out",
                       plots=False)
    md = (out / "report.md").read_text()
    assert md.count(SKIP_MESSAGE) == 1, [line for line in md.splitlines() if SKIP_MESSAGE in line]
    assert "**skipped**: all 3 impls at conv, k=5, batch 8: " + SKIP_MESSAGE in md
    text = html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text()))
    assert text.count(SKIP_MESSAGE) == 1
    lines = _prose_lines(md)
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated
    assert "not run: see the reason" in md and md.count("not run: see the reason") == 1


def _swatches(page: Path) -> dict[str, str]:
    return {name: color for color, name in
            re.findall(r'<span class="swatch" style="background:(#[0-9a-f]{6})">([^<]+)</span>', page.read_text())}


def test_each_builtin_impl_keeps_its_colour_across_runs(tmp_path):
    run_a = [ok_row(i, 64, 10.0 + n, 0.1) for n, i in enumerate(("torch", "flax", "keras-jax", "keras-tensorflow"))]
    run_b = [ok_row(i, 64, 10.0 + n, 0.1) for n, i in enumerate(("keras-torch", "torch", "flax"))]
    run_b.append(ok_row("aaa-plugin", 64, 9.0, 0.1))  # sorts before every built-in
    run_b.append({**ok_row("torch", 64, 10.0, 0.1, repeat=1), "row": "torch (1 ulp)"})
    a = build_report(run_a, out_root=tmp_path, run_id="a", plots=False)
    b = build_report(run_b, out_root=tmp_path, run_id="b", plots=False)
    colors_a = json.loads((a / "meta.json").read_text())["colors"]
    colors_b = json.loads((b / "meta.json").read_text())["colors"]
    for impl in set(colors_a) & set(colors_b) & set(IMPL_PALETTE):
        assert colors_a[impl] == colors_b[impl] == IMPL_PALETTE[impl], impl
    assert {"torch", "flax"} <= set(colors_a) & set(colors_b)
    sw_a, sw_b = _swatches(a / "report.html"), _swatches(b / "report.html")
    assert sw_a["torch"] == sw_b["torch"] and sw_a["flax"] == sw_b["flax"] and sw_b["keras-torch"] == "#9467bd"
    # plug-ins and other labels take free colours, never a built-in's
    extra = {colors_b["aaa-plugin"], colors_b["torch (1 ulp)"]}
    assert len(extra) == 2 and not extra & set(IMPL_PALETTE.values())
    everything = impl_colors([*IMPL_PALETTE, "aaa-plugin", "zzz-plugin"])
    assert all(everything[i] == impl_colors([i])[i] for i in IMPL_PALETTE)
    assert len(set(everything.values())) == len(everything)
