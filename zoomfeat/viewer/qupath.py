"""``zoomfeat export-qupath``: one QuPath-importable GeoJSON FeatureCollection per slide.

QuPath (0.4+) imports a FeatureCollection dropped on an open image: each Feature has a Polygon ``geometry``
in level-0 pixels and ``properties`` with ``objectType`` (``tile`` / ``annotation``), ``classification``
(``{"name", "color"}``) and ``measurements`` (a name → number map). Each attended instance becomes a tile
whose measurements are every run's attention score and rank; its classification is the slide's predicted
class by the primary run. The tissue polygons of the tiling step come along as annotations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from zoomfeat.io import write_text_atomic
from zoomfeat.names import SlideIdError, output_path

PALETTE = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (42, 161, 152), (181, 137, 0)]


def _primary(res, run: str | None):
    if run is not None:
        if run not in res.by_name:
            raise ValueError(f"--run {run!r} is not one of: {', '.join(res.by_name)}")
        return res.by_name[run]
    return next((r for r in res.runs if not r.survival), res.runs[0])


def slide_class(run, sid: str) -> str | None:
    """Predicted class of the slide by ``run`` (survival: high / low risk by the median out-of-fold risk)."""
    pred = run.by_slide
    if sid not in run.slides:
        return None
    if run.survival:
        return "high risk" if pred.loc[sid, "risk"] >= pred["risk"].median() else "low risk"
    k = int(pred.loc[sid, "pred"])
    classes = run.classes
    return classes[k] if k < len(classes) else str(k)


def _square(x: float, y: float, s: float, w: float, h: float) -> list | None:
    """Closed ring of the square clipped to the slide; None if nothing is left."""
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(w, x + s), min(h, y + s)
    if x1 <= x0 or y1 <= y0:
        return None
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def slide_features(res, sid: str, primary, size: tuple[float, float]) -> list[dict]:
    """Tile features (one per distinct instance square across runs) + tissue annotations of one slide."""
    w, h = size
    tiles: dict[tuple[int, int, int], dict] = {}
    for run in res.runs:
        if sid not in run.slides:
            continue
        att = res.attention(run.name, sid)
        if att is None:
            continue
        order = att.order
        for j in range(len(att.score)):
            key = (int(att.x[j]), int(att.y[j]), int(round(att.size)))
            m = tiles.setdefault(key, {})
            m[f"{run.name}: attention"] = float(att.score[j])
            m[f"{run.name}: attention rank"] = int(order[j])
            m[f"{run.name}: attention rank (0-1)"] = float(att.rank[j])
    cls = slide_class(primary, sid)
    colour = _colour(primary, cls)
    feats = []
    for (x, y, s), meas in sorted(tiles.items()):
        ring = _square(x, y, s, w, h)
        if ring is None:
            continue
        props = {"objectType": "tile", "name": f"{x},{y} ({s}px)", "measurements": meas}
        if cls is not None:
            props["classification"] = {"name": cls, "color": list(colour)}
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": props})
    feats += _tissue(res, sid, w, h)
    return feats


def _colour(run, cls: str | None) -> tuple[int, int, int]:
    names = run.classes or ["low risk", "high risk"]
    return PALETTE[names.index(cls) % len(PALETTE)] if cls in names else (128, 128, 128)


def _tissue(res, sid: str, w: float, h: float) -> list[dict]:
    """Tissue polygons of ``tiles/geojson/{slide}.geojson`` clipped to the slide, as locked annotations."""
    p = res.tissue_geojson(sid)
    if p is None:
        return []
    from shapely.geometry import box, mapping, shape

    frame = box(0, 0, w, h)
    out = []
    for f in json.loads(Path(p).read_text()).get("features", []):
        geom = shape(f["geometry"]).intersection(frame)
        if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        out.append({"type": "Feature", "geometry": mapping(geom),
                    "properties": {"objectType": "annotation", "name": "Tissue", "isLocked": True,
                                   "classification": {"name": "Tissue", "color": [40, 200, 60]}}})
    return out


def export_qupath(res, out: str | os.PathLike, run: str | None = None, progress: bool = True) -> dict[str, Path | str]:
    """Write ``{out}/{slide}.geojson`` for every slide; returns slide → path, or slide → reason when skipped."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    primary = _primary(res, run)
    done: dict[str, Path | str] = {}
    for sid in tqdm(res.slide_ids, desc="qupath", unit="slide", disable=not progress):
        size = res.slide_size(sid)
        if size is None:
            done[sid] = "slide size unknown: WSI and tiling not found (pass --slides / --tiles)"
            continue
        feats = slide_features(res, sid, primary, size)
        if not any(f["properties"]["objectType"] == "tile" for f in feats):
            done[sid] = "no attention: bag or fold checkpoint not found"
        fc = {"type": "FeatureCollection", "features": feats}
        try:
            path = output_path(out, sid, ".geojson")
        except SlideIdError as exc:
            done[sid] = str(exc)
            continue
        write_text_atomic(path, json.dumps(fc))
        done.setdefault(sid, path)
    return done


def check_feature_collection(fc: dict, width: float, height: float) -> list[str]:
    """Problems QuPath's GeoJSON import would have with ``fc`` (empty list: fine); polygons must lie in the slide."""
    errs = []
    if fc.get("type") != "FeatureCollection" or not isinstance(fc.get("features"), list):
        return ["not a FeatureCollection with a features list"]
    for i, f in enumerate(fc["features"]):
        g, p = f.get("geometry") or {}, f.get("properties")
        if f.get("type") != "Feature" or not isinstance(p, dict):
            errs.append(f"feature {i}: not a Feature with properties")
            continue
        if p.get("objectType") not in ("tile", "annotation", "detection"):
            errs.append(f"feature {i}: objectType {p.get('objectType')!r}")
        c = p.get("classification")
        if c is not None and (not isinstance(c.get("name"), str) or len(c.get("color", [])) != 3):
            errs.append(f"feature {i}: classification needs name and 3-value color")
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (p.get("measurements") or {}).values()):
            errs.append(f"feature {i}: non-numeric measurement")
        polys = [g.get("coordinates")] if g.get("type") == "Polygon" else g.get("coordinates") \
            if g.get("type") == "MultiPolygon" else None
        if not polys:
            errs.append(f"feature {i}: geometry {g.get('type')!r} is not a (Multi)Polygon")
            continue
        for poly in polys:
            for ring in poly:
                a = np.asarray(ring, float)
                if a.ndim != 2 or a.shape[1] != 2 or len(a) < 4 or not np.allclose(a[0], a[-1]):
                    errs.append(f"feature {i}: ring is not a closed list of ≥ 4 [x, y] points")
                elif a.min() < 0 or (a[:, 0] > width).any() or (a[:, 1] > height).any():
                    errs.append(f"feature {i}: polygon leaves the slide ({width}×{height})")
    return errs
