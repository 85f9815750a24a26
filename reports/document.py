"""The report's document model: :class:`Doc`, a list of blocks rendered both as GitHub Markdown and as
one self-contained HTML page (inline CSS, plots embedded as base64), so the two always say the same.
Knows nothing about benchmarks.

The HTML page fits a 1,280 px window: text wraps, images shrink to the column, and a table wider than the
column scrolls inside its own box, never the page. A long part (:meth:`Doc.details`) is a ``<details>``
element, collapsed, in the HTML, and written out in full in the Markdown. A few lines of plain script sort a
table by a click on a column header; without the script the page reads the same, unsorted.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Doc"]


@dataclass
class Doc:
    """A tiny block model rendered to both Markdown and HTML, so the two always say the same."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> None:
        self.blocks.append(("table", headers, rows, right or set()))

    def img(self, rel: str, alt: str, anchor: str | None = None) -> None:
        self.blocks.append(("img", rel, alt, anchor))

    def open(self, anchor: str | None = None, cls: str | None = None) -> None:
        """Start a ``<div>`` (an anchor for links and layout checks); nothing in the Markdown."""
        self.blocks.append(("open", "div", anchor, cls, None))

    def details(self, summary: str) -> None:
        """Start a part collapsed in the HTML (``<details>``), written in full in the Markdown; end it with
        :meth:`close`."""
        self.blocks.append(("open", "details", None, None, summary))

    def close(self) -> None:
        """End the innermost :meth:`open` or :meth:`details`."""
        self.blocks.append(("close",))

    def raw_html(self, html_text: str, md_text: str) -> None:
        self.blocks.append(("raw", html_text, md_text))

    # ------------------------------------------------------------------ markdown

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "note":
                out += [f"<sub>{b[1]}</sub>", ""]
            elif kind == "ul":
                out += [f"- {i}" for i in b[1]] + [""]
            elif kind == "table":
                _, headers, rows, right = b
                cell = lambda t: " ".join(str(t).split()).replace("|", "\\|") or " "
                out.append("| " + " | ".join(cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|")
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif kind == "raw" and b[2]:
                out += [b[2], ""]
            elif kind == "open" and b[4]:
                out += [f"*{b[4]}:*", ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html

    def html(self, base: Path) -> str:
        body: list[str] = [f"<h1>{_inline(self.title)}</h1>"]
        ids: dict[str, int] = {}
        opened: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                level = min(6, b[1])
                anchor = re.sub(r"[^a-z0-9]+", "-", b[2].lower()).strip("-") or "section"
                n = ids.get(anchor, 0)
                ids[anchor] = n + 1
                anchor = anchor if n == 0 else f"{anchor}-{n}"
                body.append(f'<h{level} id="{anchor}">{_inline(b[2])}</h{level}>')
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "note":
                body.append(f'<p class="note">{_inline(b[1])}</p>')
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                _, headers, rows, right = b
                cls = lambda i, right=right: ' class="num"' if i in right else ""
                head = "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(headers))
                trs = "".join("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row))
                              + "</tr>" for row in rows)
                sortable = ' class="sortable"' if len(rows) > 1 else ""
                body.append(f'<div class="scroll"><table{sortable}><thead><tr>{head}</tr></thead>'
                            f"<tbody>{trs}</tbody></table></div>")
            elif kind == "img":
                path = base / b[1]
                src = ("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()) if path.exists() \
                    else html.escape(b[1], quote=True)
                anchor = f' id="{html.escape(b[3], quote=True)}"' if len(b) > 3 and b[3] else ""
                body.append(f'<figure{anchor}><img src="{src}" alt="{html.escape(b[2], quote=True)}">'
                            f"<figcaption>{_inline(b[2])}</figcaption></figure>")
            elif kind == "raw":
                body.append(b[1])
            elif kind == "open":
                _, tag, anchor, cls, summary = b
                attrs = (f' id="{html.escape(anchor, quote=True)}"' if anchor else "") + \
                    (f' class="{html.escape(cls, quote=True)}"' if cls else "")
                body.append(f"<{tag}{attrs}>" + (f"<summary>{_inline(summary)}</summary>" if tag == "details" else ""))
                opened.append(tag)
            elif kind == "close" and opened:
                body.append(f"</{opened.pop()}>")
        body += [f"</{t}>" for t in reversed(opened)]
        return _page(self.title, "\n".join(body))


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:4px 8px;
vertical-align:top}th{background:#f6f8fa;text-align:left}td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}.scroll{overflow-x:auto;max-width:100%}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px;font-size:.9em;word-break:break-word}
p,li,td{overflow-wrap:anywhere}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#57606a}
details{margin:.6em 0;padding:.2em .8em;border:1px solid #d0d7de;border-radius:6px}
summary{cursor:pointer;font-weight:600;padding:.3em 0}
table.sortable th{cursor:pointer}table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.answer{font-size:1.08em}.answer ul{margin:.3em 0;padding-left:1.4em}.answer p{margin:.4em 0}
h1{font-size:1.6em;margin:.2em 0 .3em}
.note{font-size:.85em;color:#57606a}a{color:#0969da}
.swatch{display:inline-block;min-width:1.2em;padding:0 4px;border-radius:3px;color:#fff;font-size:.85em}
"""


#: sorts a table by a click on its header: numbers by value (units of time and bytes read as such), text
#: alphabetically; "—" and empty cells last. Without it the tables read the same, in the report's order.
_SCRIPT = """
(function(){var U={"µs":1e-6,"ms":1e-3,"s":1,"B":1,"KiB":1024,"MiB":1048576,"GiB":1073741824,"GB":1e9,"%":1};
function key(t){t=t.trim();var m=t.match(/^(-?[\\d,]*\\.?\\d+(?:e[-+]?\\d+)?)\\s*(µs|ms|s|B|KiB|MiB|GiB|GB|%)?/);
if(m){return [0,parseFloat(m[1].replace(/,/g,""))*(U[m[2]]||1)];}return [t&&t!=="—"?1:2,t.toLowerCase()];}
document.querySelectorAll("table.sortable").forEach(function(tb){tb.querySelectorAll("th").forEach(function(th,i){
th.title="sort";th.addEventListener("click",function(){var d=th.getAttribute("aria-sort")==="ascending"?-1:1;
tb.querySelectorAll("th").forEach(function(h){h.removeAttribute("aria-sort");});
th.setAttribute("aria-sort",d>0?"ascending":"descending");var body=tb.tBodies[0];
Array.from(body.rows).map(function(r){return [key(r.cells[i]?r.cells[i].textContent:""),r];}).sort(function(a,b){
if(a[0][0]!==b[0][0])return a[0][0]-b[0][0];return a[0][1]<b[0][1]?-d:a[0][1]>b[0][1]?d:0;})
.forEach(function(p){body.appendChild(p[1]);});});});});})();
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


_CODE = re.compile(r"`([^`]*)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """The Markdown subset the report uses (code spans, bold, links) as HTML, everything else escaped."""
    parts = _CODE.split(str(text))
    out = []
    for i, part in enumerate(parts):
        esc = html.escape(part, quote=True)
        if i % 2:
            out.append(f"<code>{esc}</code>")
            continue
        esc = _BOLD.sub(r"<strong>\1</strong>", esc)
        esc = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', esc)
        out.append(esc)
    return "".join(out)
