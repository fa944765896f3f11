"""Pieces of a self-contained HTML page: sections, tables, and figures as embedded PNGs.

Nothing is fetched when the page is opened: figures are ``data:`` URIs, the style is
inline, and the only links are to the page's own sections.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib.pyplot as plt
import pandas as pd

__all__ = ["STYLE", "figure_tag", "page", "preformatted", "section", "table"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; line-height: 1.4; padding: 0 1em; }
nav a { margin-right: 1em; }
section { margin-top: 2.5em; border-top: 1px solid #ddd; padding-top: 0.5em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def figure_tag(figure, alt: str, *, dpi: int = 80) -> str:
    """``figure`` as an ``<img>`` with the PNG inline (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(frame: pd.DataFrame, *, digits: int = 4, index: bool = True) -> str:
    """``frame`` as an HTML table, its text escaped."""
    return frame.to_html(
        escape=True, index=index, border=0, float_format=lambda v: f"{v:.{digits}g}"
    )


def preformatted(text: str) -> str:
    """``text`` as it is, in a ``<pre>`` block."""
    return f"<pre>{html.escape(text)}</pre>"


def section(anchor: str, title: str, *parts: str, note: str = "") -> str:
    """A section with an ``id`` for the page's navigation."""
    body = "\n".join(parts)
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{extra}\n{body}\n</section>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: ``sections`` as ``(anchor, title, html)``, a navigation bar first."""
    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "\n".join(s for _, _, s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="note">{html.escape(subtitle)}</p>\n'
        f"<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )
