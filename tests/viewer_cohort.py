"""A small real result folder for the viewer tests: synthetic WSIs → `zoomfeat tile` → colour-statistics bags
(read from the slides' pixels; the synthetic HRD label is lymphocyte density, i.e. dark pixels) → `mil cv` and
`compare` with tiny heads. Shared by tests/test_viewer*.py and the docs screenshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=2", "hparams.min_epochs=0",
        "hparams.patience=2", "hparams.lr=3e-3", "hparams.progress=false", "n_folds=2",
        "hparams.wandb=false", "val_fraction=0.5"]


def colour_features(rgb: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 → (B, 8): mean and std RGB, dark (lymphocyte-like) fraction, mean saturation."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    return np.concatenate([x.mean((1, 2)), x.std((1, 2)), (mx < 75 / 255).mean((1, 2))[:, None] * 10,
                           sat.mean((1, 2))[:, None]], axis=1).astype(np.float32)


def write_colour_bags(slides: Path, tiles: Path, out: Path) -> Path:
    """``{out}/features_colour/{slide}.h5`` with 20x features, 5x features and parent_index (zoomfeat layout)."""
    from zoomfeat.bags import bag_path, write_bag
    from zoomfeat.slides.coords import coords_path, read_coords
    from zoomfeat.slides.reader import open_slide

    for slide in sorted(slides.glob("*.tiff")):
        cp = coords_path(tiles, slide.stem)
        g = read_coords(cp)
        with open_slide(slide) as wsi:
            f20 = colour_features(np.stack([wsi.read_region_l0(int(x), int(y), g.patch_size_level0, 32)
                                            for x, y in g.coords]))
            f5 = colour_features(np.stack([wsi.read_region_l0(int(x), int(y), g.patch_size_level0_5x, 32)
                                           for x, y in g.coords_5x]))
        write_bag(bag_path(out, "colour", slide.stem), f20, g.coords,
                  {"encoder": "colour", "patch_size_level0": g.patch_size_level0, "coords_file": str(cp),
                   "patch_size_level0_5x": g.patch_size_level0_5x},
                  f5, g.coords_5x, g.parent_index, coords_attrs={"patch_size_level0": g.patch_size_level0})
    return out / "features_colour"


def build(root: Path, n_slides: int = 8, sizes=(1024, 1280), compare: bool = True) -> dict[str, Path]:
    """Everything under ``root``; returns the interesting paths. About 5-10 s on one core (8 slides, 2 epochs: the
    viewer tests check recomputation, routes and drawing, which do not depend on how well the heads learned)."""
    from zoomfeat.cli import main
    from zoomfeat.slides import make_cohort
    from zoomfeat.slides.tiling import tile_cohort

    root = Path(root)
    labels = make_cohort(root / "cohort", n_slides=n_slides, seed=0, progress=False, sizes_20x=sizes)
    slides = root / "cohort" / "slides"
    tile_cohort(slides, root / "tiles", progress=False)
    bags = write_colour_bags(slides, root / "tiles", root / "features")
    cv = root / "cv"
    assert main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(cv), f"labels={labels}",
                 f"bags={bags}", "heatmaps=0", *TINY]) == 0
    out = {"root": root, "labels": labels, "slides": slides, "tiles": root / "tiles", "bags": bags, "cv": cv}
    if compare:
        cmp_dir = root / "compare"
        assert main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(cmp_dir), "--labels",
                     str(labels), "--bags", f"colour-20x={bags}:20x", "--bags", f"colour-5x={bags}:5x",
                     "--tasks", "hrd,survival", "--frameworks", "transmil", *TINY, "n_repeats=1"]) == 0
        out["compare"] = cmp_dir
    return out
