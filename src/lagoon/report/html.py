"""Render sections as one self-contained HTML page: inline CSS, figures as base64 PNG, no scripts; the only
links are relative ones to other files of the same run directory."""

from __future__ import annotations

import base64
import datetime
import html

from lagoon.report.blocks import Figure, Links, Section, Table, Text

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d2433; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
       border-bottom: 1px solid #d8dde6; padding-bottom: 0.2rem; }
.meta { color: #5b6478; font-size: 0.9rem; } figure { margin: 0.8rem 0; } img { max-width: 100%; }
figcaption { color: #5b6478; font-size: 0.85rem; } table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d8dde6; padding: 0.25rem 0.55rem; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f2f4f8; } nav a { margin-right: 0.8rem; font-size: 0.9rem; }
"""


def _block(block) -> str:
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img alt="{html.escape(block.caption or "figure")}" src="data:image/png;base64,{data}">{caption}</figure>'
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
                       for row in block.rows)
        caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Links):
        items = "".join(f'<li><a href="{html.escape(href, quote=True)}">{html.escape(label)}</a></li>'
                        for label, href in block.items)
        return f"<ul>{items}</ul>"
    raise AssertionError(f"unknown report block {type(block).__name__}")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = " ".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
    parts = [f'<h2 id="{a}">{html.escape(s.title)}</h2>' + "".join(_block(b) for b in s.blocks)
             for a, s in zip(anchors, sections)]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"meta\">{html.escape(subtitle)} · generated {stamp}</p><nav>{nav}</nav>"
            + "".join(parts) + "</body></html>\n")
