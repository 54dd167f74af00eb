"""HTML pages of the viewer. Each page embeds its data as JSON (so the static export works from ``file://``,
where pages cannot fetch) and loads ``static/viewer.js``, which draws the tables and drives OpenSeadragon."""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

import numpy as np

from zoomfeat.viewer.render import css_gradient

GALLERY_K = 8


#: characters that could end a <script> element, open an HTML comment or CDATA state, or end a JS line
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: ``<``, ``>``, ``&``, U+2028 and U+2029 become ``\\uXXXX`` escapes (a
    label such as ``<!--<script>`` would otherwise switch the HTML parser into a state that swallows the page)."""
    text = json.dumps(obj, separators=(",", ":"), default=_default)
    return text.translate(str.maketrans(_SCRIPT_ESCAPES))


def url_part(s: str) -> str:
    """One URL path component (a slide id with ``#``, ``?``, ``%`` or ``/`` stays one component)."""
    return quote(str(s), safe="")


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def page(title: str, base: str, kind: str, data: dict, body: str) -> str:
    """A full page: ``base`` is the relative path to the site root ("" or "../")."""
    t = html.escape(title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}static/viewer.css"></head>
<body data-page="{kind}">
<header><a class="home" href="{base}index.html">zoomfeat results</a> <span class="title">{t}</span></header>
<main>{body}</main>
<script src="{base}static/openseadragon/openseadragon.min.js"></script>
<script>window.ZF = {script_json({**data, "base": base, "kind": kind})};</script>
<script src="{base}static/viewer.js"></script>
</body></html>
"""


def index_page(res, tables: list[dict], generated: list[dict]) -> str:
    data = {"runs": [r.meta() for r in res.runs], "slides": res.slide_rows(), "tables": tables,
            "generated": generated, "galleries": [{"run": r.name, "url": f"gallery/{i}.html"}
                                                  for i, r in enumerate(res.runs)]}
    body = """
<section><h2>Slides</h2>
<div class="controls">
  <label>filter <input id="filter" placeholder="slide, patient, label…"></label>
  <label>task <select id="task"><option value="">all</option></select></label>
  <label>head <select id="model"><option value="">all</option></select></label>
  <label><input type="checkbox" id="wrongfirst" checked> wrong first</label>
  <span id="count"></span>
</div>
<table id="slides" class="grid"><thead></thead><tbody></tbody></table>
</section>
<section id="galleries"><h2>Attention galleries</h2><ul></ul></section>
<section id="tables"><h2>Comparison tables and plots</h2></section>
<section id="generated"><h2>Generated patches</h2></section>
"""
    return page(f"{res.root.name}: {len(res.slide_ids)} slides, {len(res.runs)} runs", "", "index", data, body)


def attention_payload(att) -> dict:
    return {"size": float(att.size), "x": att.x.round().astype(int), "y": att.y.round().astype(int),
            "score": np.round(att.score, 6), "rank": np.round(att.rank, 4), "order": att.order}


def slide_page(res, sid: str, dzi: dict | None, size: tuple[int, int] | None, runs: list[dict],
               grid: dict | None, crops: bool) -> str:
    g = None
    if grid is not None:
        par = grid["parents"]
        g = {"size": grid["size"], "x": grid["coords"][:, 0], "y": grid["coords"][:, 1],
             "px": par[:, 0].round().astype(int), "py": par[:, 1].round().astype(int),
             "ps": par[:, 2].round().astype(int), "n5": 0 if grid["coords_5x"] is None else len(grid["coords_5x"])}
    data = {"slide": sid, "dzi": dzi, "width": size[0] if size else None, "height": size[1] if size else None,
            "info": res.slide_row(sid), "runs": runs, "grid": g, "crops": crops, "k": GALLERY_K,
            "overlays": {k: f"../overlay/{url_part(sid)}/{k}.png" for k in ("tissue", "grid", "regions")}}
    body = f"""
<div id="summary"></div>
<div class="toolbar">
  <label><input type="checkbox" id="ov-tissue"> tissue</label>
  <label><input type="checkbox" id="ov-grid"> 20x tiles</label>
  <label><input type="checkbox" id="ov-regions"> 5x regions</label>
  <label><input type="checkbox" id="ov-heat" checked> attention</label>
  <select id="runA"></select>
  <label>opacity <input type="range" id="opacity" min="0" max="1" step="0.05" value="0.5"></label>
  <label><input type="checkbox" id="sbs"> side by side</label>
  <select id="runB"></select>
  <span class="colorbar"><span>low</span><span class="bar" style="background:{css_gradient()}"></span>
  <span>high attention rank</span></span>
</div>
<div id="views"><div id="osdA" class="osd"></div><div id="osdB" class="osd" hidden></div></div>
<div id="clicked" class="panel"><em>Click a tile to see it at 20x with its 5x parent region and its attention
rank.</em></div>
<section id="gallery"><h2>Most and least attended tiles</h2><div class="cards"></div></section>
"""
    return page(f"slide {sid}", "../", "slide", data, body)


def gallery_page(res, i: int, per_class: dict[str, dict]) -> str:
    run = res.runs[i]
    data = {"run": run.meta(), "classes": per_class, "k": GALLERY_K}
    body = """<p id="about"></p><div id="classes"></div>"""
    return page(f"attention gallery: {run.name}", "../", "gallery", data, body)
