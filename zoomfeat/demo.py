"""End-to-end demo on an embedded synthetic cohort: the whole toolkit in one command (`make demo`).

Every step is the CLI verb a user would run (printed before it runs), executed in-process, so the demo doubles as
a worked example of the command line: synth-cohort → tile → train (tiny ZoomLDM) → extract (ZoomLDM 20x/5x +
a baseline encoder) → compare (ABMIL and TransMIL, subtype / HRD / survival, patient-level 5-fold CV) → generate.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MICRO = ROOT / "tests" / "data" / "zoomldm_official_micro"  # vendored; only for --skip-train


def _run(argv: list[str], log: list[tuple[str, float]]) -> None:
    from zoomfeat.cli import main

    cmd = "zoomfeat " + " ".join(shlex.quote(a) for a in argv)
    print(f"\n$ {cmd}", flush=True)
    t0 = time.perf_counter()
    rc = main(argv)
    dt = time.perf_counter() - t0
    log.append((cmd, dt))
    if rc not in (0, None):
        raise RuntimeError(f"demo step failed (exit {rc}): {cmd}")
    print(f"  ({dt:.1f} s)", flush=True)


def _ssl_grid_from_slide(slide: Path, tiles_dir: Path, out_npy: Path, ssl_dim: int) -> Path:
    """The 4×4 SSL grid (tiny-vit embeddings of 16 20x tiles) of one 5x region: a real conditioning input."""
    import numpy as np
    import torch

    from zoomfeat.encoders import create_encoder
    from zoomfeat.slides.coords import coords_path, read_coords
    from zoomfeat.slides.reader import open_slide

    grid = read_coords(coords_path(tiles_dir, slide.stem))
    enc = create_encoder("tiny-vit", dim=ssl_dim)
    x0, y0 = (int(v) for v in grid.coords_5x[len(grid.coords_5x) // 2])
    step = int(grid.patch_size_level0)
    with open_slide(slide) as wsi:
        tiles = [wsi.read_region_l0(x0 + c * step, y0 + r * step, step, 256) for r in range(4) for c in range(4)]
    with torch.inference_mode():
        emb = enc.encode(torch.from_numpy(np.stack(tiles)))  # [16, D], row-major
    arr = emb.float().T.reshape(1, ssl_dim, 4, 4).numpy()
    np.save(out_npy, arr)
    out_npy.with_suffix(".region.json").write_text(f'{{"slide": "{slide.stem}", "x": {x0}, "y": {y0}, "size_l0": {4*step}}}')
    return out_npy


def run_demo(out: str | Path = "demo_out", n_slides: int = 24, train_steps: int = 200, folds: int = 5,
             skip_train: bool = False) -> Path:
    """Run the demo into ``out`` and return the comparison folder; reruns reuse finished steps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[tuple[str, float]] = []
    t_start = time.perf_counter()

    cohort = out / "cohort"
    labels = cohort / "labels.csv"
    if not labels.exists():
        _run(["synth-cohort", "--out", str(cohort), "--n-slides", str(n_slides), "--seed", "0"], log)
    slides = cohort / "slides"

    tiles = out / "tiles"
    _run(["tile", str(slides), "--out", str(tiles), "--no-progress"], log)

    model_dir = out / "model"
    if not skip_train:
        run_dir = out / "train"
        final = run_dir / "model"
        _run(["train", "--config", "configs/train/tiny.yaml", "--out", str(run_dir), "--max-steps", str(train_steps),
              *(["--resume"] if (run_dir / "checkpoints").exists() else [])], log)
        model_dir = final
    if skip_train or not (model_dir / "zoomldm_config.json").exists() and not any(model_dir.glob("*")):
        model_dir = out / "model_fixture"
        if not model_dir.exists():
            _run(["convert", str(FIXTURE_MICRO / "weights.ckpt"), str(FIXTURE_MICRO / "config.yaml"), str(model_dir)],
                 log)

    feats = out / "features"
    common = [str(slides), "--tiles", str(tiles), "--out", str(feats), "--no-progress", "--workers", "0"]
    _run(["extract", *common, "--encoder", "zoomldm", "--weights", str(model_dir), "--mags", "20x,5x",
          "--conditioning", "uni", "--ssl-encoder", "tiny-vit"], log)
    _run(["extract", *common, "--encoder", "tiny-vit", "--mags", "20x"], log)

    cmp_root = out / "compare"
    bags = [f"zoomldm-20x={feats / 'features_zoomldm'}:20x",
            f"zoomldm-5x={feats / 'features_zoomldm'}:5x",
            f"zoomldm-20x+5x={feats / 'features_zoomldm'}:20x+5x",
            f"baseline-tinyvit={feats / 'features_tiny-vit'}:20x"]
    for head in ("abmil", "transmil"):
        argv = ["compare", "--config", "configs/mil/demo_compare.yaml", "--out", str(cmp_root / head),
                "--labels", str(labels)]
        for b in bags:
            argv += ["--bags", b]
        extra = ["hparams.epochs=10", "hparams.patience=4"] if head == "transmil" else []  # CPU budget of the demo
        _run([*argv, f"model={head}", f"n_folds={folds}", *extra], log)

    from zoomfeat.demo_external import external_validation  # final model + external cohort (issue 18)

    external_validation(out, labels, feats / "features_tiny-vit", log, folds=folds)
    gen = out / "generated"
    first_slide = sorted(slides.iterdir())[0]
    from zoomfeat.ldm import ZoomLDM

    ssl_dim = ZoomLDM.from_pretrained(model_dir).ssl_dim
    grid_npy = _ssl_grid_from_slide(first_slide, tiles, out / "ssl_grid_5x.npy", ssl_dim)
    _run(["generate", "--model", str(model_dir), "--ssl", str(grid_npy), "--mag", "5x", "--n", "4", "--steps", "20",
          "--out", str(gen / "5x")], log)
    import numpy as np

    np.save(out / "ssl_grid_20x.npy", np.load(grid_npy)[:, :, :1, :1])
    _run(["generate", "--model", str(model_dir), "--ssl", str(out / "ssl_grid_20x.npy"), "--mag", "20x", "--n", "4",
          "--steps", "20", "--out", str(gen / "20x")], log)

    print("\n" + "=" * 80)
    print(f"zoomfeat demo finished in {time.perf_counter() - t_start:.0f} s\n")
    for head in ("abmil", "transmil"):
        table_md = cmp_root / head / "compare.md"
        if table_md.exists():
            print(table_md.read_text())
    print("Outputs:")
    for name, path in [("synthetic cohort + labels", cohort), ("coordinate files, QC PNGs, GeoJSON", tiles),
                       ("ZoomLDM model", model_dir), ("feature bags", feats), ("comparison tables + plots", cmp_root),
                       ("generated patches", gen)]:
        print(f"  {name:<38} {path}")
    print("\nStep timings:")
    for cmd, dt in log:
        print(f"  {dt:7.1f} s  {cmd[:100]}")
    print(f"\nLook at the results (attention heatmaps, deep zoom): zoomfeat view {out}  → http://127.0.0.1:8000/")
    return cmp_root
