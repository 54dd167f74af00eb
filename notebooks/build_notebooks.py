"""Write the walkthrough notebooks (notebooks/*.ipynb) from the cell lists below, without outputs.

The notebooks are generated so that they stay reviewable as plain Python and never carry stale outputs:
edit the cells here, then run ``python notebooks/build_notebooks.py`` (``--check`` only verifies that the
committed .ipynb files match this script). ``tests/test_notebooks.py`` executes every notebook top to bottom.

Every notebook finds the repository (``ZOOMFEAT_ROOT`` or the first parent of the working directory holding
``pyproject.toml`` + ``zoomfeat/``), the vendored test data (``ROOT/tests/data``, see its README) and
writes into ``ZOOMFEAT_NB_OUT`` (default ``ROOT/outputs/notebooks/<name>``, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Shared first code cell: repository, fixtures, output folder, CPU threads, quiet progress-bar warnings.
SETUP = '''\
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image, Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm falls back to text bars without ipywidgets


def find_root() -> Path:
    """The zoomfeat repository: $ZOOMFEAT_ROOT, else the first parent of the working directory that holds it."""
    if os.environ.get("ZOOMFEAT_ROOT"):
        return Path(os.environ["ZOOMFEAT_ROOT"]).resolve()
    for p in (Path.cwd(), *Path.cwd().parents):
        if (p / "pyproject.toml").is_file() and (p / "zoomfeat").is_dir():
            return p
    raise RuntimeError("start the notebook inside the zoomfeat repository or set ZOOMFEAT_ROOT")


ROOT = find_root()
FIXTURES = ROOT / "tests" / "data"  # vendored with the repository: slides, official-format micro ZoomLDM
OUT = Path(os.environ.get("ZOOMFEAT_NB_OUT", ROOT / "outputs" / "notebooks" / "{name}")).resolve()
OUT.mkdir(parents=True, exist_ok=True)
if os.environ.get("ZOOMFEAT_NB_THREADS"):  # the test suite pins 1 thread: faster on a busy 2-core machine
    torch.set_num_threads(int(os.environ["ZOOMFEAT_NB_THREADS"]))
TINY = FIXTURES / "zoomldm_official_micro"  # official-format ZoomLDM with random weights (micro widths)
print("repository:", ROOT)
print("fixtures:  ", FIXTURES)
print("outputs:   ", OUT)
'''


def setup(name: str) -> str:
    return SETUP.replace("{name}", name)


# ------------------------------------------------------------------------------------------------------------------
# 01 — feature extraction

NB01 = [
    ("md", """\
# 01 · Feature extraction: slide → tiles → ZoomLDM and baseline features → HDF5 bags

This walkthrough runs the feature pipeline on a real H&E slide (a crop of the public CMU-1 slide shipped with the
test fixtures) in under a minute on a CPU:

1. open the slide and check its resolution (µm/px) and where that value came from;
2. tile it at 20x (256 px at 0.5 µm/px) with linked 5x parent regions, and look at the QC image;
3. load a ZoomLDM checkpoint in the official format (`weights.ckpt` + `config.yaml`);
4. extract ZoomLDM UNet features at 20x and 5x (conditioned on an SSL encoder's embeddings, as in training) and a
   baseline encoder's features into one HDF5 bag per slide;
5. open a bag with zoomfeat (20x, 5x, fused 20x+5x) and read it the way CLAM does (plain `h5py`).

The model here is the **micro random-weight fixture** (64-px images, 24-d SSL tokens) and the SSL encoder is
`tiny-vit`, a seeded random ViT standing in for UNI. The features are therefore meaningless; the point is the
pipeline, the file layout and the API. The commands for the released weights are at the end."""),
    ("code", setup("01_feature_extraction")),
    ("md", """\
## 1 · Open the slide

`open_slide` wraps OpenSlide. Magnification is defined by resolution (20x = 0.5 µm/px), so the first thing to check
is the slide's level-0 µm/px and its source: an override (`--mpp`, `--mpp-csv`), the `openslide.mpp-x/y`
properties, vendor keys, TIFF resolution tags, or — last resort — the objective power."""),
    ("code", '''\
from PIL import Image as PILImage

from zoomfeat.slides import open_slide

SLIDE = FIXTURES / "slides" / "cmu_small_region.svs"
with open_slide(SLIDE) as wsi:
    print(f"slide id        {wsi.name}")
    print(f"level-0 size    {wsi.dimensions[0]} x {wsi.dimensions[1]} px")
    print(f"mpp             {wsi.mpp} µm/px   (source: {wsi.mpp_source})")
    print(f"objective power {wsi.objective_power}")
    print(f"levels          {wsi.level_count}, downsamples {wsi.level_downsamples}")
    thumb = wsi.thumbnail(384)
PILImage.fromarray(thumb)'''),
    ("md", """\
## 2 · Tile at 20x with linked 5x regions

`tile_slide` detects tissue on a low-resolution thumbnail, lays a 256-px 20x grid anchored at level-0 (0, 0), keeps
tiles with enough tissue and links every 20x tile to its 5x parent region (a 4×4 block of 20x tiles). It writes the
coordinate HDF5 (TRIDENT + CLAM attributes), a QC PNG and the tissue GeoJSON."""),
    ("code", '''\
from zoomfeat.slides import read_coords, tile_slide

TILES = OUT / "tiles"
coords_file = tile_slide(SLIDE, TILES, scales="20x,5x")
grid = read_coords(coords_file)
print(coords_file.relative_to(OUT))
print(f"20x tiles     {grid.coords.shape}  (level-0 side {grid.patch_size_level0} px, shown at {grid.patch_size} px)")
print(f"5x regions    {grid.coords_5x.shape}  (level-0 side {grid.patch_size_level0_5x} px)")
print(f"parent_index  {grid.parent_index.shape}  first rows: {grid.parent_index[:8]}")
print(f"mpp           {grid.mpp_level0} ({grid.mpp_source}) -> target {grid.target_mpp}")
display(Image(filename=str(TILES / "qc" / f"{grid.slide}.png"), width=420))'''),
    ("md", """\
The QC image shows the tissue mask (green), the kept 20x tiles (blue) and the 5x regions (orange).

## 3 · Load ZoomLDM from an official checkpoint

`ZoomLDM.from_official` reads the released `weights.ckpt` (with `torch.load(weights_only=True)`) and its
`config.yaml`, and rebuilds the model from diffusers parts: `UNet2DConditionModel` (EMA weights), `VQModel` and the
Summarizer that turns an SSL grid + magnification into the cross-attention context."""),
    ("code", '''\
from zoomfeat.ldm import ZoomLDM

ldm = ZoomLDM.from_official(TINY / "weights.ckpt", TINY / "config.yaml")
print(f"image {ldm.image_size} px -> latent {ldm.latent_channels}x{ldm.latent_size}x{ldm.latent_size}, "
      f"SSL dim {ldm.ssl_dim}, context dim {ldm.context_dim}, {ldm.mag_levels} magnifications")
print("feature blocks (index, channels, stride):", [(b.index, b.channels, b.stride) for b in ldm.feature_blocks()])'''),
    ("md", """\
## 4 · Extract features into HDF5 bags

The `zoomldm` encoder VQ-encodes each tile, noises the latent to timestep `t` (per-tile seeded noise, so reruns
are identical), runs the UNet only up to the requested block (early exit) and average-pools it. A 20x tile is
conditioned on its own SSL embedding (1×1 grid at 20x); a 5x region on the 4×4 grid of its 16 children's SSL
embeddings (at 5x) — exactly the model's training inputs. Here block 0 (the middle block) at t = 100.

`extract_cohort` runs any list of slides (skipping bags that are already complete with the same settings, reporting
per-slide failures) and writes `OUT/bags/features_{encoder}/{slide}.h5`. The baseline (`tiny-vit`, standing in for
UNI/Phikon) goes through the same call."""),
    ("code", '''\
import json

from zoomfeat.encoders import create_encoder
from zoomfeat.extract import ExtractOptions, extract_cohort

zoomldm_enc = create_encoder("zoomldm", weights=TINY / "weights.ckpt", ldm=ldm, ssl_encoder="tiny-vit",
                             blocks=[0], t=[100], precision="fp32")
baseline_enc = create_encoder("tiny-vit")
print(f"zoomldm: {zoomldm_enc.dim}-d features, SSL encoder {zoomldm_enc.ssl_encoder.name} ({zoomldm_enc.ssl_encoder.dim}-d)")
print(f"baseline: {baseline_enc.name}, {baseline_enc.dim}-d")

BAGS = OUT / "bags"
opts = ExtractOptions(mags=("20x", "5x"), batch_size=32, workers=0)  # workers > 0: one slide handle per worker
for enc in (zoomldm_enc, baseline_enc):
    report = extract_cohort([SLIDE], enc, BAGS, tiles_dir=TILES, opts=opts)
    report.print()
    timings = json.loads((BAGS / f"features_{enc.name}" / "timings.json").read_text())
    print(enc.name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in timings[0].items()})
sorted(str(p.relative_to(OUT)) for p in BAGS.rglob("*.h5"))'''),
    ("md", """\
## 5 · Open a bag

`load_bag` returns the arrays and attributes; `read_bag(path, mag)` gives one matrix for MIL: `20x` (one row per
tile), `5x` (one row per parent region) or `20x+5x` (each 20x row concatenated with its parent's 5x row through
`parent_index`). The file attributes record everything needed to reproduce the features."""),
    ("code", '''\
from zoomfeat.bags import bag_path, load_bag, read_bag

path = bag_path(BAGS, "zoomldm", grid.slide)
bag = load_bag(path)
print(f"features     {bag.features.shape} {bag.features.dtype}")
print(f"coords       {bag.coords.shape} {bag.coords.dtype}")
print(f"features_5x  {bag.features_5x.shape}, coords_5x {bag.coords_5x.shape}, parent_index {bag.parent_index.shape}")
for mag in ("20x", "5x", "20x+5x"):
    print(f"read_bag(..., {mag!r:9}) -> {read_bag(path, mag).shape}")
keys = ["encoder", "dim", "block", "t", "conditioning", "ssl_encoder", "mags", "mpp_level0", "mpp_source",
        "patch_size", "patch_size_level0", "patch_size_level0_5x", "precision", "encoder_weights_sha256"]
{k: bag.attrs.get(k) for k in keys}'''),
    ("code", '''\
base = load_bag(bag_path(BAGS, "tiny-vit", grid.slide))
assert np.array_equal(base.coords, bag.coords)  # same tiles, same order: encoders are comparable row by row
print(f"baseline features {base.features.shape}, 5x {base.features_5x.shape}")'''),
    ("md", """\
### Read it like CLAM / TRIDENT

The root `features` and `coords` datasets are what CLAM's `Generic_MIL_Dataset` and TRIDENT read, and `coords`
carries their attributes (`patch_size`, `patch_size_level0`, `level0_magnification`, …), so a bag can be handed to
those tools as is."""),
    ("code", '''\
import h5py

with h5py.File(path, "r") as f:
    print("datasets:", sorted(f.keys()), "| 5x group:", sorted(f["5x"].keys()))
    features = torch.from_numpy(f["features"][:])  # what CLAM's dataset returns for a slide
    coords = f["coords"][:]
    coord_attrs = {k: f["coords"].attrs[k] for k in ("patch_size", "patch_size_level0", "level0_magnification",
                                                      "target_magnification") if k in f["coords"].attrs}
print(features.shape, features.dtype, coords[:3].tolist())
coord_attrs'''),
    ("md", """\
## With the released weights

Put local paths into `configs/encoders/weights.yaml` (zoomfeat never downloads weights) and run the same steps from
the command line — on a GPU, or several with `torchrun`:

```bash
zoomfeat tile slides/ --out tiles/ [--mpp-csv mpp.csv]
zoomfeat convert brca/weights.ckpt brca/config.yaml models/zoomldm_brca       # once: diffusers folder
zoomfeat extract slides/ --config configs/extract/zoomldm_brca.yaml --tiles tiles/ --out bags/ \\
    --weights models/zoomldm_brca --ssl-weights /path/to/uni/pytorch_model.bin
zoomfeat extract slides/ --config configs/extract/uni.yaml --tiles tiles/ --out bags/ --weights /path/to/uni/pytorch_model.bin
torchrun --nproc_per_node 4 -m zoomfeat extract slides/ --config configs/extract/zoomldm_brca.yaml --tiles tiles/ --out bags/
```

In Python: `create_encoder("zoomldm", weights="models/zoomldm_brca", ssl_encoder="uni", ssl_weights=...)` (960-d
middle-block features at full size) and `create_encoder("uni", weights=...)`, then `extract_cohort` as above."""),
]


# ------------------------------------------------------------------------------------------------------------------
# 02 — MIL comparison

NB02 = [
    ("md", """\
# 02 · MIL: ABMIL and TransMIL with patient-level cross-validation, and an encoder comparison

1. `mil.cross_validate` on in-memory bags: ABMIL and TransMIL, a binary task and a survival task, one row per fold;
2. `mil.compare` over two bag folders on disk (the layout `zoomfeat extract` writes) with shared patient-level
   splits → a markdown table and a plot.

The bags are synthetic with a known answer (`mil.synthetic`): a binary label set by a rare instance concept, a
survival hazard set by the fraction of risk instances. Models and epochs are tiny so that the notebook runs in about
a minute on a CPU; the real-size settings are in `configs/mil/` (see the end)."""),
    ("code", setup("02_mil_comparison") + '''
import mil
from mil.synthetic import concept_bags, survival_bags, write_bags

# tiny heads and few epochs; wandb=False: no run logging from a notebook
HP = dict(embed_dim=32, attn_dim=16, lr=3e-3, epochs=6, patience=3, batch_size=4, progress=False, n_boot=100,
          wandb=False)
TRANSMIL = dict(heads=2, num_landmarks=8)  # TransMIL's Nyström attention, shrunk'''),
    ("md", """\
## 1 · Binary task: ABMIL vs TransMIL

48 bags of 10–30 instances, two bags per patient. `groups` holds the patient ids: folds never split a patient, and
each fold keeps an inner validation set (20 %) for early stopping. The result is a DataFrame with one row per fold;
pooled out-of-fold predictions and a bootstrap summary ride along in `df.attrs`."""),
    ("code", '''\
bags, y = concept_bags(48, dim=16, size=(10, 30), strength=5.0, seed=0)
patients = [f"patient_{i // 2:02d}" for i in range(len(bags))]
y = np.asarray([y[2 * (i // 2)] for i in range(len(bags))])  # one label per patient
print(f"{len(bags)} bags, {len(set(patients))} patients, instances per bag {min(map(len, bags))}-{max(map(len, bags))}, "
      f"positives {y.mean():.0%}")

binary = {}
for model in ("abmil", "transmil"):
    hp = {**HP, **(TRANSMIL if model == "transmil" else {})}
    binary[model] = mil.cross_validate(bags, y, patients, model=model, task="binary", n_folds=3, seed=0, **hp)
binary["abmil"][["fold", "auc", "accuracy", "balanced_accuracy", "f1", "best_epoch", "n_train", "n_val", "n_test"]]'''),
    ("code", '''\
import pandas as pd

pd.concat({m: df.attrs["summary"].set_index("metric") for m, df in binary.items()}, names=["model"]).round(3)'''),
    ("md", """\
On a cohort this small (32 training bags per fold, 6 epochs) ABMIL usually finds the rare concept and TransMIL
usually does not: its self-attention layers need far more bags (the learning test in `tests/test_mil_learning.py`
trains both on 300 bags and asks AUC > 0.95 of each). Expect TransMIL near chance here — a property of the toy
budget, not of the method.

## 2 · Survival: Cox partial likelihood

Labels are `(time, event)` pairs; the head outputs a risk score and the metric is Harrell's c-index (lifelines).
The Cox loss needs several bags per step (risk sets), hence the larger batch."""),
    ("code", '''\
sbags, time_event, true_risk = survival_bags(60, dim=16, size=(10, 30), seed=0)
print(f"{len(sbags)} bags, events {time_event[:, 1].mean():.0%}")
survival = {}
for model in ("abmil", "transmil"):
    hp = {**HP, "batch_size": 16, **(TRANSMIL if model == "transmil" else {})}
    survival[model] = mil.cross_validate(sbags, time_event, model=model, task="survival", n_folds=3, seed=0, **hp)
# (df.attrs holds DataFrames, which pd.concat cannot compare: build the table from plain columns)
pd.DataFrame({f"{m} c_index": df["c_index"].to_numpy() for m, df in survival.items()},
             index=pd.Index(survival["abmil"]["fold"].to_numpy(), name="fold")).round(3)'''),
    ("md", """\
## 3 · Compare encoders over bag folders

`write_bags` writes the same kind of HDF5 bags `zoomfeat extract` does (20x features, 5x features, `parent_index`)
plus a labels CSV (`slide, patient, subtype, hrd, time, event`). We write an *informative* encoder and a *noise*
encoder over the same 24 slides (12 patients). `mil.compare` trains every (encoder entry × task) on the **same**
patient-level folds — a bag folder can appear several times with different magnifications (`20x`, `5x`,
`20x+5x`) — and writes `compare.csv`, `compare.md` and `compare.png`. In these bags the subtype shows in a third
of the instances, so the informative encoder should clearly beat the noise encoder (≈ 0.5) on subtyping."""),
    ("code", '''\
informative, labels_csv = write_bags(OUT / "bags", n_slides=24, dim=8, seed=0, encoder="informative")
noise, _ = write_bags(OUT / "bags", n_slides=24, dim=8, seed=0, encoder="noise", informative=False)
print(informative.relative_to(OUT), len(list(informative.glob("*.h5"))), "bags")
pd.read_csv(labels_csv).head()'''),
    ("code", '''\
cfg = {
    "labels": str(labels_csv),
    "encoders": [
        {"name": "informative-20x+5x", "bags": str(informative), "mag": "20x+5x"},
        {"name": "noise-20x", "bags": str(noise), "mag": "20x"},
    ],
    "tasks": ["subtype", "survival"],  # also "hrd"; or {name, task, target} for any labels column
    "model": "abmil",
    "n_folds": 3,
    "seed": 0,
    "hparams": {**HP, "batch_size": None},  # None: 1 for classification, 16 for Cox
}
COMPARE = OUT / "compare"
table = mil.compare(cfg, COMPARE)
print(sorted(p.name for p in COMPARE.iterdir()))
table[table["metric"].isin(["auc", "c_index"])].round(3)'''),
    ("code", '''\
display(Markdown((COMPARE / "compare.md").read_text().split("All metrics")[0]))
display(Image(filename=str(COMPARE / "compare.png"), width=560))'''),
    ("md", """\
Each entry × task folder also holds the per-fold metrics, the out-of-fold predictions, a summary and a ROC curve
(classification) or a Kaplan–Meier plot of the predicted risk groups (survival):"""),
    ("code", '''\
for png in (COMPARE / "informative-20x+5x" / "subtype" / "roc.png",
            COMPARE / "informative-20x+5x" / "survival" / "km.png"):
    print(png.relative_to(OUT))
    display(Image(filename=str(png), width=420))'''),
    ("md", """\
## Real-size runs

With bags from `zoomfeat extract` (notebook 01) and a labels CSV, the same runs use CLAM-sized heads, 5 folds and up
to 100 epochs with early stopping:

```bash
zoomfeat mil cv --config configs/mil/abmil_subtype.yaml labels=cohort/labels.csv bags=bags/features_zoomldm mag=20x+5x
zoomfeat mil cv --config configs/mil/transmil_hrd.yaml labels=cohort/labels.csv bags=bags/features_zoomldm
zoomfeat mil cv --config configs/mil/abmil_survival.yaml labels=cohort/labels.csv bags=bags/features_uni
zoomfeat compare --config configs/mil/compare.yaml --labels cohort/labels.csv --out runs/compare \\
    --bags zoomldm-20x=bags/features_zoomldm:20x --bags zoomldm-5x=bags/features_zoomldm:5x \\
    --bags zoomldm-20x+5x=bags/features_zoomldm:20x+5x --bags uni=bags/features_uni:20x
```"""),
]


# ------------------------------------------------------------------------------------------------------------------
# 03 — generation and super-resolution

NB03 = [
    ("md", """\
# 03 · Generation and super-resolution with ZoomLDM

1. generate patches at 20x and 5x from SSL grids (here computed from a real H&E image);
2. joint multi-scale sampling of a large 20x image together with its low-magnification guide;
3. 4× super-resolution of a downsampled H&E image: invert the unseen 20x SSL tokens, then sample 20x patches
   constrained to the low-resolution image; PSNR / SSIM against the original.

The model is the **micro random-weight fixture** with `tiny-vit` as the SSL encoder and every setting is cut to the
bone (few steps, few iterations), so the images are noise-like and the metrics are low; with the released weights
the same calls give histology. The real-size commands are at the end."""),
    ("code", setup("03_generation_superres") + '''
from PIL import Image as PILImage

from zoomfeat.ldm import ZoomLDM

ldm = ZoomLDM.from_official(TINY / "weights.ckpt", TINY / "config.yaml")
S = ldm.image_size  # 64 px for the fixture, 256 for the released model
print(f"image {S} px, latent {ldm.latent_size}, SSL dim {ldm.ssl_dim}, {ldm.mag_levels} magnifications")
hr = np.asarray(PILImage.open(FIXTURES / "slides" / "he_tile_1000px.png").convert("RGB"))
print("H&E tile:", hr.shape)'''),
    ("md", """\
## 1 · Patches at 20x and 5x

The condition of scale k is the SSL grid of its 2^k × 2^k 20x tiles: one token for a 20x patch, a 4×4 grid for a 5x
patch. `ssl_grid_from_image` cuts a region into that grid of 256-px tiles and encodes each one (UNI with real
weights, `tiny-vit` here); a random grid works as well (`np.random.randn(C, s, s)`). `generate_patches` samples with
DDIM and classifier-free guidance and decodes through the VQ decoder."""),
    ("code", '''\
from zoomfeat.encoders import create_encoder
from zoomfeat.generate.patches import generate_patches, save_image_grid, ssl_grid_from_image

ssl_enc = create_encoder("tiny-vit", dim=ldm.ssl_dim)
grid_20x = ssl_grid_from_image(hr[:256, :256], ssl_enc, side=1)  # one 20x tile
grid_5x = ssl_grid_from_image(hr, ssl_enc, side=4)               # a region of 4x4 20x tiles
print("SSL grids:", tuple(grid_20x.shape), tuple(grid_5x.shape))

p20 = generate_patches(ldm, grid_20x, "20x", n=4, steps=10, guidance_scale=2.0, seed=0)
p5 = generate_patches(ldm, grid_5x, "5x", n=4, steps=10, guidance_scale=2.0, seed=0)
grid_png = save_image_grid(np.concatenate([p20, p5]), OUT / "patches_grid.png", nrow=4)
print(f"{len(p20)} patches at 20x (top row), {len(p5)} at 5x (bottom row), {p20.shape[1]} px each")
display(Image(filename=str(grid_png), width=4 * 2 * S))'''),
    ("md", """\
## 2 · Joint multi-scale large image

An N×N grid of 20x patches is sampled together with a guide at magnification log2 N that covers the same region;
at every step each patch is pulled towards its tile of the guide with the backprop-free update, and the result is
decoded with Gaussian-blended overlapping windows. Here N = 2 (a 2S × 2S image), 4 timesteps and 1 update per
step."""),
    ("code", '''\
from zoomfeat.generate.large import LargeImageConfig, sample_large_image

region_grid = ssl_grid_from_image(hr[:512, :512], ssl_enc, side=2)[0].numpy()  # [C, 2, 2]
cfg = LargeImageConfig(t0=1000, stride=250, n_steps=1, decode_stride=ldm.latent_size // 2, progress=False)
large = sample_large_image(ldm, region_grid, cfg, seed=0)
print(f"large image {large.image.shape}, guide {large.guide.shape} at magnification index {large.mag_index}, "
      f"constraint RMSE {large.constraint_error:.3f}, {large.seconds:.1f} s")
guide_up = np.asarray(PILImage.fromarray(large.guide).resize(large.image.shape[:2][::-1], PILImage.NEAREST))
PILImage.fromarray(np.concatenate([guide_up, np.full((large.image.shape[0], 8, 3), 255, np.uint8), large.image], 1))'''),
    ("md", """\
Left: the low-magnification guide (enlarged); right: the stitched 20x image.

## 3 · Super-resolution 4×

The H&E tile downsampled 4× plays the low-magnification (5x) image. `super_resolve` first learns the 4×4 grid of
20x SSL tokens that best explains it under the model's own denoising loss (condition inversion), then samples the
20x patches conditioned on those tokens and constrained to the LR image. `sr_metrics` computes PSNR / SSIM
(scikit-image) against the original tile resized to the SR size."""),
    ("code", '''\
from zoomfeat.generate.superres import SuperResConfig, side_by_side, sr_metrics, super_resolve

lr = np.asarray(PILImage.fromarray(hr).resize((250, 250), PILImage.BICUBIC))  # 4x downsampled
scfg = SuperResConfig(scale=4, iters=6, sampling=LargeImageConfig(t0=1000, stride=500, n_steps=1,
                                                                  decode_stride=ldm.latent_size // 2,
                                                                  progress=False))
sr = super_resolve(ldm, lr, scfg, seed=0, progress=False)
inv = sr.inversion
print(f"LR {sr.lr.shape} -> SR {sr.sr.shape} in {sr.seconds:.1f} s")
print(f"inversion objective on fixed probes: {inv.probe_before:.4f} -> {inv.probe_after:.4f}")
metrics = sr_metrics(sr.sr, hr)
print(f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}  (bicubic-upsampled LR vs SR below)")
PILImage.fromarray(side_by_side(sr.lr, sr.sr))'''),
    ("code", '''\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(inv.losses, marker="o", label="total")
ax.plot(inv.denoise_losses, marker=".", label="weighted denoising term")
ax.set_xlabel("inversion iteration (t from 950 down to 50)")
ax.set_ylabel("loss")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "inversion_loss.png", dpi=100)
display(fig)  # works whatever backend an earlier import selected
plt.close(fig)'''),
    ("md", """\
## With the released weights (GPU recommended)

```bash
zoomfeat convert brca/weights.ckpt brca/config.yaml models/zoomldm_brca
zoomfeat generate --model models/zoomldm_brca --image region.png --encoder uni --mag 5x --n 8 --out gen/ --steps 50
zoomfeat generate --model models/zoomldm_brca --ssl region_uni_grid.npy --mag 5x --n 8 --out gen/
zoomfeat generate-large --model models/zoomldm_brca --ssl region_uni_grid.npy --size 1024 --out out/large --refine
zoomfeat superres --model models/zoomldm_brca --image lr_5x.png --reference hr_20x.png --out out/sr   # 200 iterations
```

The defaults follow the official notebooks: 50 DDIM steps for patches, 20 timesteps × 10 constraint updates for
large images, 200 inversion iterations and 5 updates per step for super-resolution."""),
]


NOTEBOOKS = {
    "01_feature_extraction.ipynb": NB01,
    "02_mil_comparison.ipynb": NB02,
    "03_generation_superres.ipynb": NB03,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A v4 notebook without outputs; cell ids are positional so regenerating gives identical files."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells: list[tuple[str, str]]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify that the .ipynb files are up to date")
    args = ap.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        text = render(cells)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print("out of date (run python notebooks/build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
