"""The viewer as a set of URL paths → bytes, shared by the live server (``zoomfeat view``) and the static export
(``--export SITE``): both serve exactly the same pages, overlays and crops; only Deep Zoom tiles differ (made on
demand by the server, written up to a level cap by the export)."""

from __future__ import annotations

import mimetypes
import re
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from zoomfeat.viewer import pages
from zoomfeat.viewer.render import (GRID_RGBA, REGION_RGBA, SlideSource, boxes_png, encode, heatmap_png,
                                    tissue_png)
from zoomfeat.viewer.results import inside

CROP_PX = 192
FILE_SUFFIXES = {".png", ".md", ".csv", ".txt", ".json", ".jpg", ".jpeg"}
_DZ_TILE = re.compile(r"^dz/([^/]+)_files/(\d+)/(\d+)_(\d+)\.jpeg$")
_CROP = re.compile(r"^crop/([^/]+)/(\d+)_(\d+)_(\d+)\.jpg$")


class NotFound(Exception):
    pass


def static_root() -> Path:
    return Path(str(resources.files("zoomfeat.viewer") / "static"))


class Site:
    """Builds every page and image of the viewer for one :class:`~zoomfeat.viewer.results.Results`."""

    def __init__(self, results, max_side: int | None = None, crop_limit: int | None = None):
        """``max_side``: Deep Zoom levels whose larger side is at most this many px (None: every level, the live
        server); ``crop_limit``: click crops only for slides with at most this many tiles (None: every slide)."""
        self.res = results
        self.max_side = max_side
        self.crop_limit = crop_limit
        self._sources: dict[str, SlideSource | None] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- helpers
    def source(self, sid: str) -> SlideSource | None:
        """The open WSI of a slide (cached), or None when it cannot be found or opened."""
        with self._lock:
            if sid not in self._sources:
                p = self.res.slide_path(sid)
                try:
                    self._sources[sid] = SlideSource(p) if p is not None else None
                except Exception:  # noqa: BLE001 - an unreadable WSI leaves the page without pixels, not broken
                    self._sources[sid] = None
            return self._sources[sid]

    def _slide(self, sid: str) -> str:
        if sid not in self.res.slide_ids:
            raise NotFound(f"unknown slide {sid!r}")
        return sid

    def run_payloads(self, sid: str) -> list[dict]:
        out = []
        for i, run in enumerate(self.res.runs):
            if sid not in run.slides:
                continue
            att = self.res.attention(run.name, sid)
            heat = f"../overlay/{pages.url_part(sid)}/heat/{i}.png" if att is not None else None
            rec = {"i": i, **run.meta(), "heat": heat}
            if att is not None:
                rec.update(pages.attention_payload(att))
            out.append(rec)
        return out

    # ------------------------------------------------------------------------------------------- routing
    def get(self, path: str) -> tuple[bytes, str]:
        """(body, content type) of a site path such as ``index.html`` or ``slides/x.html``; NotFound otherwise."""
        path = path.lstrip("/") or "index.html"
        if ".." in path.split("/"):
            raise NotFound(path)
        if path == "index.html":
            return self.index().encode(), "text/html; charset=utf-8"
        if path.startswith("static/"):
            return self._static(path[len("static/"):])
        m = _DZ_TILE.match(path)
        if m:
            src = self._src_or_404(self._slide(m.group(1)))
            try:
                return src.tile_jpeg(int(m.group(2)), int(m.group(3)), int(m.group(4))), "image/jpeg"
            except ValueError as exc:
                raise NotFound(str(exc)) from exc
        parts = path.split("/")
        if parts[0] == "dz" and len(parts) == 2 and parts[1].endswith(".dzi"):
            return self._src_or_404(self._slide(parts[1][:-4])).dzi_xml().encode(), "application/xml"
        if parts[0] == "slides" and len(parts) == 2 and parts[1].endswith(".html"):
            return self.slide(self._slide(parts[1][:-5])).encode(), "text/html; charset=utf-8"
        if parts[0] == "gallery" and len(parts) == 2 and parts[1].endswith(".html") and parts[1][:-5].isdigit():
            return self.gallery(int(parts[1][:-5])).encode(), "text/html; charset=utf-8"
        if parts[0] == "overlay" and len(parts) >= 3:
            return self.overlay(self._slide(parts[1]), "/".join(parts[2:])), "image/png"
        m = _CROP.match(path)
        if m:
            src = self._src_or_404(self._slide(m.group(1)))
            x, y, s = (int(m.group(k)) for k in (2, 3, 4))
            try:
                return encode(src.crop(x, y, s, CROP_PX), "JPEG", 85), "image/jpeg"
            except ValueError as exc:  # a size of 0, or one that would read more than MAX_READ_PX pixels
                raise NotFound(str(exc)) from exc
        if parts[0] == "files":
            return self._file("/".join(parts[1:]))
        if parts[0] == "gen" and len(parts) == 3:
            return self._generated(int(parts[1]) if parts[1].isdigit() else -1, parts[2])
        raise NotFound(path)

    def _src_or_404(self, sid: str) -> SlideSource:
        src = self.source(sid)
        if src is None:
            raise NotFound(f"{sid}: WSI not found (pass --slides DIR)")
        return src

    def _static(self, rel: str) -> tuple[bytes, str]:
        root = static_root().resolve()
        p = (root / rel).resolve()
        if root not in p.parents or not p.is_file():
            raise NotFound(rel)
        return p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream"

    def _file(self, rel: str) -> tuple[bytes, str]:
        p = inside(self.res.root, self.res.root / rel)
        if p is None or not p.is_file() or p.suffix.lower() not in FILE_SUFFIXES:
            raise NotFound(rel)
        ctype = mimetypes.guess_type(p.name)[0] or "text/plain"
        return p.read_bytes(), ctype + ("; charset=utf-8" if ctype.startswith("text/") else "")

    def _generated(self, i: int, name: str) -> tuple[bytes, str]:
        if not 0 <= i < len(self.res.generated):
            raise NotFound(name)
        g = self.res.generated[i]
        if name == "region.jpg" and g.region:
            r = g.region
            src = self._src_or_404(self._slide(str(r["slide"])))
            try:
                return encode(src.crop(r["x"], r["y"], r["size_l0"], 256), "JPEG", 90), "image/jpeg"
            except ValueError as exc:  # a region too large to read (MAX_READ_PX)
                raise NotFound(str(exc)) from exc
        for p in g.images:  # find_generated kept only images that resolve inside their generation folder
            if p.name == name and inside(g.path, p) is not None:
                return p.read_bytes(), "image/png"
        raise NotFound(name)

    # --------------------------------------------------------------------------------------------- pages
    def table_entries(self) -> list[dict]:
        out = []
        for p in self.res.tables():
            if inside(self.res.root, p) is None:  # a symlink out of the run folder is neither read nor listed
                continue
            rel = p.relative_to(self.res.root).as_posix()
            entry = {"name": rel, "url": f"files/{rel}", "kind": "image" if p.suffix == ".png" else "text"}
            if entry["kind"] == "text":
                entry["text"] = p.read_text()
            out.append(entry)
        return out

    def generated_entries(self) -> list[dict]:
        out = []
        for i, g in enumerate(self.res.generated):
            region = None
            if g.region and str(g.region.get("slide")) in self.res.slide_ids:
                region = {**g.region, "url": f"gen/{i}/region.jpg"}
            out.append({"name": str(g.path.name), "meta": {k: g.meta.get(k) for k in ("mag", "steps", "guidance",
                                                                                       "seed", "ssl")},
                        "images": [f"gen/{i}/{p.name}" for p in g.images], "region": region})
        return out

    def index(self) -> str:
        return pages.index_page(self.res, self.table_entries(), self.generated_entries())

    def max_level(self, src: SlideSource) -> int | None:
        """The highest Deep Zoom level served for ``src`` (None: every level)."""
        return None if self.max_side is None else default_max_level(src, self.max_side)

    def crops(self, sid: str) -> bool:
        """Whether the slide's click panels get tile / region crops (a WSI, and not more tiles than crop_limit)."""
        if self.source(sid) is None:
            return False
        if self.crop_limit is None:
            return True
        g = self.res.grid(sid)
        return g is not None and len(g["coords"]) <= self.crop_limit

    def slide(self, sid: str) -> str:
        src = self.source(sid)
        size = self.res.slide_size(sid)
        dzi = src.dzi_info(self.max_level(src)) if src is not None else None
        g = self.res.grid(sid)
        if g is not None:
            g = {**g, "parents": parents_of(g)}
        return pages.slide_page(self.res, sid, dzi, size, self.run_payloads(sid), g, crops=self.crops(sid))

    def gallery(self, i: int) -> str:
        if not 0 <= i < len(self.res.runs):
            raise NotFound(f"gallery {i}")
        return pages.gallery_page(self.res, i, self.gallery_data(i))

    def gallery_data(self, i: int) -> dict[str, dict]:
        """Per true class: the top-k and bottom-k attended instances pooled over that class's slides."""
        run = self.res.runs[i]
        pred = run.predictions
        key = "label" if "label" in pred.columns else None
        out: dict[str, dict] = {}
        groups = pred.groupby(key) if key else [("all slides", pred)]
        for cls, df in groups:
            atts = [(sid, self.res.attention(run.name, sid)) for sid in df["slide"]]
            top, bottom = extremes([(sid, a) for sid, a in atts if a is not None], pages.GALLERY_K)
            out[str(cls)] = {"n_slides": int(len(df)), "top": [self._card(t) for t in top],
                             "bottom": [self._card(t) for t in bottom]}
        return out

    def _card(self, t: tuple) -> dict:
        rank, score, sid, x, y, size = t
        g = self.res.grid(sid)
        rx, ry, rs = parent_region(g, x, y, size)
        return {"slide": sid, "x": x, "y": y, "size": size, "rank": rank, "score": score,
                "region": [rx, ry, rs], "crops": self.source(sid) is not None}

    # ------------------------------------------------------------------------------------------ overlays
    def overlay(self, sid: str, name: str) -> bytes:
        size = self.res.slide_size(sid)
        if size is None:
            raise NotFound(f"{sid}: slide size unknown")
        w, h = size
        g = self.res.grid(sid)
        if name == "tissue.png":
            return tissue_png(w, h, self.res.tissue_geojson(sid), self.source(sid))
        if name == "grid.png" and g is not None:
            return boxes_png(w, h, g["coords"], g["size"], GRID_RGBA)
        if name == "regions.png" and g is not None and g["coords_5x"] is not None:
            return boxes_png(w, h, g["coords_5x"], g["size_5x"], REGION_RGBA)
        if name.startswith("heat/") and name[5:-4].isdigit() and name.endswith(".png"):
            i = int(name[5:-4])
            if 0 <= i < len(self.res.runs):
                att = self.res.attention(self.res.runs[i].name, sid)
                if att is not None:
                    return heatmap_png(w, h, att.x, att.y, att.size, att.rank)
        if name == "regions.png":  # no 5x regions tiled: an empty layer keeps the page simple
            return boxes_png(w, h, np.zeros((0, 2)), 1.0, REGION_RGBA)
        raise NotFound(f"{sid}: overlay {name}")


def default_max_level(src: SlideSource, max_side: int) -> int:
    """Highest Deep Zoom level whose larger side is at most ``max_side`` px."""
    best = 0
    for lvl, (w, h) in enumerate(src.dz.level_dimensions):
        if max(w, h) <= max_side:
            best = lvl
    return best


def extremes(atts: list, k: int) -> tuple[list[tuple], list[tuple]]:
    """The k most and k least attended instances pooled over ``(slide, Attention)`` pairs, as
    ``(rank, score, slide, x, y, size)``: ordered by (rank, score), ties in pooling order (a stable sort), the top
    read from the reversed order. Vectorised: a cohort pools millions of instances to keep 2k."""
    if not atts:
        return [], []
    rank = np.concatenate([np.asarray(a.rank, dtype=float) for _, a in atts])
    score = np.concatenate([np.asarray(a.score, dtype=float) for _, a in atts])
    owner = np.repeat(np.arange(len(atts)), [len(a.score) for _, a in atts])
    local = np.concatenate([np.arange(len(a.score)) for _, a in atts])
    order = np.lexsort((score, rank))  # stable: equal keys keep their pooling order, as list.sort did

    def item(n: int) -> tuple:
        sid, a = atts[owner[n]]
        j = local[n]
        return float(a.rank[j]), float(a.score[j]), sid, int(a.x[j]), int(a.y[j]), float(a.size)

    return [item(n) for n in order[::-1][:k]], [item(n) for n in order[:k]]


def parent_region(g: dict | None, x: float, y: float, size: float) -> tuple[float, float, float]:
    """The 5x region holding the tile at (x, y): the tiling's own 5x grid when present, else the 4×4 block."""
    if g is not None and g.get("coords_5x") is not None and g.get("size_5x"):
        c5, s5 = g["coords_5x"], float(g["size_5x"])
        hit = np.where((c5[:, 0] <= x) & (x < c5[:, 0] + s5) & (c5[:, 1] <= y) & (y < c5[:, 1] + s5))[0]
        if len(hit):
            return float(c5[hit[0], 0]), float(c5[hit[0], 1]), s5
    s5 = 4 * (g["size"] if g is not None else size)
    return float(np.floor(x / s5) * s5), float(np.floor(y / s5) * s5), float(s5)


def parents_of(g: dict) -> np.ndarray:
    """(N, 3) parent 5x region (x, y, size) of every 20x tile, vectorised (40k tiles in milliseconds)."""
    c = np.asarray(g["coords"], dtype=float).reshape(-1, 2)
    if g.get("parent") is not None and g.get("coords_5x") is not None and len(g["parent"]) == len(c):
        p = np.asarray(g["coords_5x"], dtype=float)[np.asarray(g["parent"], dtype=int)]
        return np.column_stack([p, np.full(len(c), float(g["size_5x"]))])
    return np.array([parent_region(g, x, y, g["size"]) for x, y in c]).reshape(-1, 3)
