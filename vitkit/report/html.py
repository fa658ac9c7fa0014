"""report.html: one self-contained page (figures embedded as data URIs, no external resources), readable offline.

When the page has loaded, `<body>` carries `data-figures` (how many figures it has) and `data-loaded` (how many of
them decoded), so a browser test can check every figure without looking at pixels.
"""
from __future__ import annotations

import base64
import html

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.8}main{max-width:1200px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#f0f3f8;border-radius:6px;padding:8px 14px;min-width:110px}.card b{display:block;font-size:20px}
.card span{font-size:12px;color:#5a6472}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 10px;border-bottom:1px solid #e4e7ec;text-align:right}td:first-child,th:first-child{text-align:left}
tr.avg td{font-style:italic;background:#fafbfc}figure{margin:10px 0}figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5a6472}pre{background:#f0f3f8;padding:10px;overflow:auto;font-size:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.muted{color:#5a6472;font-size:12px}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.figures = images.length;
  document.body.dataset.loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""


def esc(value) -> str:
    return html.escape(str(value))


def figure(png: bytes, caption: str, name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                           for k, v in items) + "</div>"


def table(header: list[str], rows: list[list], avg_rows: int = 0) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for n, row in enumerate(rows):
        css = ' class="avg"' if n >= len(rows) - avg_rows else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{''.join(sections)}</main>"
            "</body></html>")
