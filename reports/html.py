"""``report.html``: one self-contained page — images inlined as base64, CSS inline, no script
and no external resource — so it can be mailed, archived or opened offline as a single file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1.2em; }
dt { font-weight: 600; } dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em;
        border-top: 2px solid #222; border-bottom: 2px solid #222; }
th, td { padding: .25em .7em; text-align: center; }
thead th { border-bottom: 1px solid #444; }
tbody th, td:first-child { text-align: left; }
.note { font-size: .85em; color: #555; max-width: 60em; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; max-width: 34em; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; }
"""


@dataclass(frozen=True)
class FigureEntry:
    """One saved figure: where it goes in the page, its caption, its files."""

    section: str
    caption: str
    png: Path
    pdf: Path


@dataclass(frozen=True)
class PageContent:
    title: str
    facts: list[tuple[str, str]]
    table_html: str
    figures: list[FigureEntry]
    tables: list[tuple[str, pd.DataFrame]]
    notes: list[str]
    #: Paragraphs shown under a figure section's heading, before its figures.
    section_texts: dict[str, list[str]] = field(default_factory=dict)


def frame_html(frame: pd.DataFrame) -> str:
    """A small DataFrame as a plain, escaped HTML table."""
    return frame.to_html(index=False, escape=True, border=0, na_rep="", classes="data")


def _figure_html(entry: FigureEntry, root: Path) -> str:
    data = base64.b64encode(entry.png.read_bytes()).decode("ascii")
    pdf = entry.pdf.relative_to(root).as_posix()
    caption = html.escape(entry.caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f'<figcaption>{caption} (<a href="{html.escape(pdf)}">PDF</a>)</figcaption>'
            "</figure>")


def _sections(figures: Sequence[FigureEntry]) -> list[tuple[str, list[FigureEntry]]]:
    """Figures grouped by section, sections in the order they first appear."""
    grouped: dict[str, list[FigureEntry]] = {}
    for entry in figures:
        grouped.setdefault(entry.section, []).append(entry)
    return list(grouped.items())


def render_page(content: PageContent, root: Path) -> str:
    """The whole page; figure files are read from disk and inlined, PDF links are relative
    to ``root`` (the report folder)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(content.title)}</title>", f"<style>{CSS}</style>", "</head>",
             "<body>", f"<h1>{esc(content.title)}</h1>", "<dl>"]
    parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in content.facts]
    parts += ["</dl>", "<h2>Results</h2>", f'<div class="scroll">{content.table_html}</div>']
    for section, entries in _sections(content.figures):
        parts += [f"<h2>{esc(section)}</h2>",
                  *(f"<p>{esc(text)}</p>" for text in content.section_texts.get(section, [])),
                  '<div class="figures">',
                  *(_figure_html(e, root) for e in entries), "</div>"]
    for title, frame in content.tables:
        parts += [f"<h2>{esc(title)}</h2>", f'<div class="scroll">{frame_html(frame)}</div>']
    if content.notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{esc(n)}</li>" for n in content.notes),
                  "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
