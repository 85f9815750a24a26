"""Every relative link in the README, docs/ and the reference runs' READMEs points at a file that exists,
and so does every repository path they name in code (`harness/run/cell.py`).

The user guide is split over several files (README.md, docs/*.md, reports/reference/**/README.md); a moved or
renamed file breaks the links to it silently on GitHub, so the suite checks them. Links to the web and links
within a page (``#anchor``) are not checked; a link's own ``#anchor`` is dropped before its file is looked up.
No framework, no worker: this reads text only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures.paths import REPO

#: ``[text](target)`` and ``![alt](target)``, the text possibly over several lines; an optional "title" after it
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
SCHEMES = ("http://", "https://", "mailto:")


def guide_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "reports" / "reference").rglob("README.md"))
    return [f for f in files if f.is_file()]


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code blocks and code spans, that name a local file."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not t.startswith(SCHEMES) and not t.startswith("#")]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


#: a repository path in a code span: `harness/run/cell.py`, `tests/fixtures/planted.py:NumpyVAE`, `tests/x.py::test_y`
CODE_PATH = re.compile(r"`((?:bench|docs|harness|impls|reports|tests)/[^`\s]*)`")
#: written by a run, not in the repository; or a pattern, not one path
NOT_A_FILE = ("reports/out/", "{", "<", "*")


def named_paths(text: str) -> list[str]:
    """Repository paths named in code spans, without a trailing ``:attribute`` or ``::test``."""
    paths = [m.group(1) for m in CODE_PATH.finditer(text)]
    paths = [p for p in paths if not any(mark in p for mark in NOT_A_FILE)]
    return [re.split(r"::|:(?=[A-Za-z_])", p)[0] for p in paths]


def test_the_guide_has_pages_with_links():
    pages = guide_files()
    assert REPO / "README.md" in pages
    assert any(p.parent == REPO / "docs" for p in pages), "docs/ has no Markdown page"
    assert relative_links((REPO / "README.md").read_text(encoding="utf-8")), "README.md links to nothing"


@pytest.mark.parametrize("page", guide_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)}: no file at {', '.join(broken)}"


@pytest.mark.parametrize("page", guide_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_the_guide_names_exists(page: Path):
    """A file moved (a test into its subject's folder, a module split) leaves no stale path in the guide."""
    missing = [p for p in named_paths(page.read_text(encoding="utf-8")) if not (REPO / p).exists()]
    assert not missing, f"{page.relative_to(REPO)} names {', '.join(missing)}, which do not exist"


def test_the_checker_catches_a_stale_path():
    text = "`harness/run/cell.py` `tests/fixtures/planted.py:NumpyVAE` `harness/nowhere.py:f` `reports/out/<id>/x.md`"
    assert named_paths(text) == ["harness/run/cell.py", "tests/fixtures/planted.py", "harness/nowhere.py"]
    assert [p for p in named_paths(text) if not (REPO / p).exists()] == ["harness/nowhere.py"]


def test_the_checker_catches_a_broken_link(tmp_path: Path):
    """The check itself can fail: a missing file is reported, code and web links are not links to check."""
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok too](there.md#part) [gone](missing.md)\n"
        "![a picture\nover two lines](img/none.png)\n"
        "`[in code](nowhere.md)` [web](https://example.org/x.md) [here](#top)\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "img/none.png"]


def test_the_readme_stays_short():
    """The README is the user guide's first page; the rest lives in docs/ (issue 21: at most 150 lines)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"
