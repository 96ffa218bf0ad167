"""The report page: one HTML file with everything inside it (figures as data: URIs, inline CSS, no
script, no link to anything), so it opens from disk, from an e-mail or a CI artifact, offline.

Numbers are written with `number()` and carry their exact value in `data-value`, so a test (or a
script) can read them back and compare them with the run's logs.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1320px;
       padding: 0 24px 48px; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin: 24px 0 4px; } h2 { font-size: 1.25em; margin: 36px 0 8px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 4px; }
.callout { border-left: 4px solid #ff7f0e; background: #fff7ef; padding: 8px 12px; margin: 8px 0; }
.ok { border-left: 4px solid #2ca02c; background: #f3fbf3; padding: 8px 12px; margin: 8px 0; }
.stall { border-left-color: #d62728; background: #fdf1f1; }
.note { color: #666; font-size: 0.9em; }
code { font-size: 0.95em; }
"""


@dataclass
class Picture:
    name: str  # element id and --png file stem
    title: str
    caption: str
    png: bytes


@dataclass
class Section:
    anchor: str
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments, in order


def number(value: float | int | None, key: str = "", digits: int = 4) -> str:
    """A number as the page shows it (4 significant digits), with its exact value for readers."""
    if value is None:
        return "-"
    shown = str(value) if isinstance(value, int) else f"{value:.{digits}g}"
    attrs = f' data-value="{value!r}"' + (f' data-key="{html.escape(key)}"' if key else "")
    return f"<span{attrs}>{shown}</span>"


def percent(share: float, key: str = "") -> str:
    attrs = f' data-value="{share!r}"' + (f' data-key="{html.escape(key)}"' if key else "")
    return f"<span{attrs}>{share * 100:.1f}%</span>"


def text(value) -> str:
    return html.escape("" if value is None else str(value))


def table(
    headers: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset(), table_id: str = ""
) -> str:
    """`rows` hold HTML already (escape text with `text()`); columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(picture: Picture) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f'<figure id="fig-{picture.name}" class="figure"><img alt="{text(picture.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{text(picture.caption)}</figcaption></figure>'
    )


def paragraph(content: str, css: str = "") -> str:
    return f'<p class="{css}">{content}</p>' if css else f"<p>{content}</p>"


def render(run_dir: str, headline: str, sections: list[Section], notes: list[str]) -> str:
    nav = " · ".join(f'<a href="#{s.anchor}">{text(s.title)}</a>' for s in sections)
    body = "".join(f'<h2 id="{s.anchor}">{text(s.title)}</h2>' + "".join(s.parts) for s in sections)
    if notes:
        body += '<h2 id="notes">Notes</h2><ul class="note">' + "".join(f"<li>{text(n)}</li>" for n in notes) + "</ul>"
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    name = os.path.basename(os.path.normpath(run_dir))
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>nestkit report: {text(name)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>nestkit report: {text(name)}</h1>"
        f'<p class="sub">{text(run_dir)} · made {made} · {headline}</p>'
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
