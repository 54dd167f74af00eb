"""Raw slides → predictions in one call (``zoomfeat predict SLIDES --model MODEL --out DIR``).

The model folder records the feature spec its head was trained on; this module rebuilds that encoder (weights from
``--weights`` or the registry, checked against the recorded sha256, recipe checked key by key) and then runs the
existing cohort machinery: ``tile_cohort`` (at the recorded µm/px and tile size) → ``extract_cohort`` (bags in
``OUT/features_{encoder}``) → ``mil.predict.run_predict`` (the same code as ``zoomfeat mil predict``, so the numbers
are identical) → heatmaps over the slide thumbnails. Tiling and extraction skip finished slides, so a rerun resumes;
a slide that fails at any stage is listed in ``OUT/summary.csv`` while the others go on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mil.deploy import load_predictor
from mil.predict import run_predict
from mil.spec import SpecMismatchError, differences, needs_5x, spec_from_attrs
from zoomfeat.bags import bag_path
from zoomfeat.cohort import CohortReport, SlideResult
from zoomfeat.encoders import create_encoder, get_encoder
from zoomfeat.extract import ExtractOptions, extract_cohort
from zoomfeat.names import resolve_slides, slide_id
from zoomfeat.predict_options import PredictConfig
from zoomfeat.slides.thumbnails import SlideThumbnails
from zoomfeat.slides.tiling import tile_cohort


@dataclass
class SlidePredictReport:
    """Per-slide status over every stage plus the prediction result (None when no slide got that far)."""

    report: CohortReport
    result: Any = None  # mil.predict.PredictResult
    out: Path | None = None

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def encoder_for_model(spec: dict, weights: str | os.PathLike | None = None,
                      ssl_weights: str | os.PathLike | None = None, registry: str | os.PathLike | None = None,
                      mag: str = "20x", official_config: str | os.PathLike | None = None):
    """Build the encoder a model's feature spec names and refuse it (SpecMismatchError) if it differs from the
    spec: other weights (sha256), another recipe, another width."""
    # the registered encoder's options table knows how to rebuild its recorded recipe
    kw = get_encoder(spec["encoder"]).options.recipe_kwargs(spec, weights=weights, ssl_weights=ssl_weights,
                                                                official_config=official_config)
    enc = create_encoder(spec["encoder"], weights=weights, registry=registry, **kw)
    # the attributes extract_slide would write, JSON round-tripped like the bag's
    cfg = json.loads(json.dumps(enc.full_config(), sort_keys=True, default=str))
    attrs = {"encoder": enc.name, "encoder_config": cfg, "encoder_weights_sha256": enc.weights_sha256,
             "dim": int(enc.dim), "patch_size": spec.get("tile_px"), "target_mpp": spec.get("target_mpp"),
             "precision": enc.precision,
             "missing_children_5x": (spec.get("recipe") or {}).get("missing_children_5x")}
    diffs = differences(spec, spec_from_attrs(attrs), mag, other="encoder built here")
    if diffs:
        raise SpecMismatchError("the encoder built for this model does not match its feature spec "
                                f"(pass the right --weights/--ssl-weights): {'; '.join(diffs)}")
    return enc


def _merge_status(slides: Sequence[Path], tile: CohortReport | None, extract: CohortReport | None,
                  skipped: list[tuple[str, str]], predicted: set[str]) -> CohortReport:
    """One row per slide: the first stage that failed, or done (predicted)."""
    fails: dict[str, str] = {}
    for stage, rep in (("tile", tile), ("extract", extract)):
        for r in (rep.results if rep else []):
            if r.status in ("failed", "locked") and r.slide not in fails:
                fails[r.slide] = f"{stage}: {r.error}"
    for s, why in skipped:
        fails.setdefault(s, f"predict: {why}")
    rows = []
    for p in slides:
        sid = slide_id(p)
        if sid in predicted:
            rows.append(SlideResult(sid, "done"))
        else:
            rows.append(SlideResult(sid, "failed", error=fails.get(sid, "no prediction")))
    return CohortReport(rows)


def predict_slides(slides: str | os.PathLike | Sequence, cfg: PredictConfig) -> SlidePredictReport:
    """Tile → extract (the model's recorded feature spec) → predict → heatmaps; see the module docstring.

    ``cfg.model``: a ``mil train`` folder or a ``mil cv`` folder (fold ensemble). Everything that can be wrong with
    the model or the encoder fails before the first slide is touched.
    """
    for name in ("model", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required (on the command line or in --config)")
    pr = load_predictor(cfg.model)
    spec = pr.feature_spec
    enc = encoder_for_model(spec, cfg.weights, cfg.ssl_weights, cfg.weights_registry, pr.mag, cfg.official_config)
    paths = resolve_slides(slides) if not isinstance(slides, (list, tuple)) else [Path(s) for s in slides]
    if not paths:
        raise FileNotFoundError(f"no slides found in {slides}")
    out, tiles = Path(cfg.out), cfg.tiles
    five = needs_5x(pr.mag)
    tile_rep = None
    if tiles is None:
        kw = {k: v for k, v in {"mpp": cfg.mpp, "mpp_csv": cfg.mpp_csv, "min_tissue": cfg.min_tissue,
                                "target_mpp": spec.get("target_mpp"), "patch_px": spec.get("tile_px")}.items()
              if v is not None}
        tile_rep = tile_cohort(paths, out / "tiles", progress=cfg.progress, scales="20x,5x" if five else "20x", **kw)
        tiles = out / "tiles"
    tiled = {r.slide for r in tile_rep.results if r.status in ("done", "skipped")} if tile_rep else None
    todo = [p for p in paths if tiled is None or slide_id(p) in tiled]
    rc = dict(spec.get("recipe") or {})
    opts = ExtractOptions(mags=("20x", "5x") if five else ("20x",), batch_size=cfg.batch_size, workers=cfg.workers,
                          device=cfg.device, mpp=cfg.mpp, mpp_csv=cfg.mpp_csv, progress=cfg.progress,
                          missing_children=rc.get("missing_children_5x") or "embed")
    ext_rep = extract_cohort(todo, enc, out, tiles_dir=tiles, opts=opts) if todo else None
    ready = {r.slide for r in ext_rep.results if r.status in ("done", "skipped")} if ext_rep else set()
    bags = {slide_id(p): bag_path(out, opts.tag or enc.name, slide_id(p)) for p in todo if slide_id(p) in ready}
    result = None
    if bags:
        thumbs = SlideThumbnails({slide_id(p): p for p in paths})
        result = run_predict(pr, bags, out, labels=cfg.labels, thumbnails=thumbs, heatmaps=cfg.heatmaps,
                             device=cfg.device, n_boot=cfg.n_boot, seed=cfg.seed)
    predicted = set(result.predictions["slide"]) if result is not None else set()
    report = _merge_status(paths, tile_rep, ext_rep, result.skipped if result else [], predicted)
    report.write(out, "summary")
    return SlidePredictReport(report, result, out)
