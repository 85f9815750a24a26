"""The report's document model: :class:`Doc`, a list of blocks rendered both as GitHub Markdown and as
one self-contained HTML page (inline CSS, plots embedded as base64), so the two always say the same.
Knows nothing about benchmarks.
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

    def img(self, rel: str, alt: str) -> None:
        self.blocks.append(("img", rel, alt))

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
            elif kind == "raw":
                out += [b[2], ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html

    def html(self, base: Path) -> str:
        body: list[str] = [f"<h1>{_inline(self.title)}</h1>"]
        ids: dict[str, int] = {}
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
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody>'
                            f"</table></div>")
            elif kind == "img":
                path = base / b[1]
                src = ("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()) if path.exists() \
                    else html.escape(b[1], quote=True)
                body.append(f'<figure><img src="{src}" alt="{html.escape(b[2], quote=True)}">'
                            f"<figcaption>{_inline(b[2])}</figcaption></figure>")
            elif kind == "raw":
                body.append(b[1])
        return _page(self.title, "\n".join(body))


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:4px 8px;
vertical-align:top}th{background:#f6f8fa;text-align:left}td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}.scroll{overflow-x:auto}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px;font-size:.9em;word-break:break-word}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#57606a}
.note{font-size:.85em;color:#57606a}a{color:#0969da}
.swatch{display:inline-block;min-width:1.2em;padding:0 4px;border-radius:3px;color:#fff;font-size:.85em}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


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
