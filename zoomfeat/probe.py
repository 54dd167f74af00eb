"""Recipe sweep: which ZoomLDM block, timestep and conditioning give features that carry which label, at which scale.

``sweep`` reads up to ``tiles_per_slide`` 20x tiles and 5x regions per slide (seeded choice), runs one UNet pass
per conditioning for all timesteps at once (early exit after the deepest requested block, see
``ZoomLDM.unet_features``), mean-pools every block per slide and caches the result per slide (atomic ``.npz``
with a settings signature, so a killed sweep resumes). Each (block, t, conditioning, mag) feature set and each
baseline encoder then goes through the same linear probe (``mil.probe_eval``) on identical repeated
patient-level splits. With ``tune_fraction`` > 0 a stratified share of the patients is held out as the tuning
set: the recipe is chosen there, and only the chosen recipe and the baselines are scored on the remaining
(report) patients — the numbers a user should quote. Outputs: ``probe.csv``, ``heatmap_{task}_{mag}.png``,
``best_recipe.yaml`` (a ``zoomfeat extract --config`` file) and ``split_patients.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

# probe_feature_set (a pool job) lives in mil.probe_eval: a worker unpickling it imports that module, not this one
# (with the LDM and encoders behind it)
from mil.probe_eval import (corrected_ci, linear_probe_scores, n_test_over_n_train, probe_feature_set,  # noqa: F401
                            repeated_splits)
from zoomfeat.encoders import create_encoder
from zoomfeat.encoders.base import TileContext
from zoomfeat.encoders.zoomldm import ZOOMLDM, ZoomLDMEncoder, ssl_encoder_for, tile_seeds
from zoomfeat.extract import ExtractOptions, input_record, load_grid
from zoomfeat.io import atomic_path, sha256_file, write_json_atomic
from zoomfeat.jobs import run_jobs, worker_count
from zoomfeat.ldm import ZoomLDM
from zoomfeat.names import resolve_slides, slide_id
from zoomfeat.precision import resolve_device
from zoomfeat.probe_spec import MAGS, ProbeConfig, SweepSpec  # noqa: F401 — the API's names
from zoomfeat.slides.coords import find_coords
from zoomfeat.slides.grid import child_grid, parents_5x
from zoomfeat.slides.reader import open_slide
from zoomfeat.weights import state_dict_sha256

PROBE_COLUMNS = ["encoder", "block", "t", "conditioning", "mag", "task", "metric", "mean", "std", "ci_low", "ci_high",
                 "alpha_bar", "noise_pct", "subset", "n_slides", "n_splits"]


# ------------------------------------------------------------------------------------------------ features


def _pick(n: int, k: int, key: str) -> np.ndarray:
    """Seeded subset of k of n indices (sorted), stable per slide."""
    if n <= k:
        return np.arange(n)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    return np.sort(rng.choice(n, k, replace=False))


def read_probe_tiles(slide: Path, grid, tiles_per_slide: int, seed: int, with_children: bool) -> dict:
    """The slide's sampled 20x tiles, 5x regions and (for SSL grids) each region's 16 children, as uint8 arrays."""
    s, px = int(grid.patch_size_level0), int(grid.patch_size)
    c20 = np.asarray(grid.coords, np.int64).reshape(-1, 2)
    c20 = c20[_pick(len(c20), tiles_per_slide, f"{grid.slide}|20x|{seed}")]
    c5, _, s5 = parents_5x(grid)
    c5 = c5[_pick(len(c5), tiles_per_slide, f"{grid.slide}|5x|{seed}")]
    with open_slide(slide, require_mpp=False) as wsi:
        out = {"coords_20x": c20, "coords_5x": c5,
               "20x": np.stack([wsi.read_region_l0(int(x), int(y), s, px) for x, y in c20]),
               "5x": np.stack([wsi.read_region_l0(int(x), int(y), s5, px) for x, y in c5])}
        if with_children:
            kids = child_grid(c5, s).reshape(-1, 2)
            out["children"] = np.stack([wsi.read_region_l0(int(x), int(y), s, px) for x, y in kids])
    return out


def _batched_encode(fn, arr: np.ndarray, bs: int, *extra):
    import torch

    outs = []
    for i in range(0, len(arr), bs):
        outs.append(fn(torch.from_numpy(arr[i:i + bs]), *[e[i:i + bs] if e is not None else None for e in extra]))
    return torch.cat(outs).float().cpu().numpy()


def zoomldm_slide_means(ldm, tiles: dict, slide: str, spec: SweepSpec, ssl_encoder=None) -> dict[str, np.ndarray]:
    """``{f"{cond}|{mag}": (n_t, Σ block channels)}`` slide means; one UNet pass per conditioning serves every t
    and block. Noise seeds are the extractor's (``tile_seeds``), so a chosen recipe reproduces in ``extract``."""
    import torch

    out: dict[str, np.ndarray] = {}
    ssl = {}
    if "uni" in spec.conditioning:
        enc = lambda x: ssl_encoder.encode(x)  # noqa: E731
        ssl["20x"] = _batched_encode(enc, tiles["20x"], spec.batch_size)[:, :, None, None]
        kids = _batched_encode(enc, tiles["children"], spec.batch_size)
        ssl["5x"] = kids.reshape(len(tiles["5x"]), 4, 4, -1).transpose(0, 3, 1, 2)
    n_t = len(spec.t)
    for cond in spec.conditioning:
        enc = ZoomLDMEncoder(ldm, blocks=sorted(spec.blocks), t=spec.t, conditioning=cond,
                             ssl_encoder=ssl_encoder if cond == "uni" else None, precision="fp32",
                             base_seed=spec.seed)
        for mag in ("20x", "5x"):
            seeds = tile_seeds(slide, tiles[f"coords_{mag}"], mag, spec.seed)
            grids = ssl.get(mag) if cond == "uni" else None

            def fn(x, sd, g, mag=mag, enc=enc):
                gt = None if g is None else torch.from_numpy(np.ascontiguousarray(g))
                return enc.encode(x, TileContext(mag, ssl_grid=gt, seeds=sd))

            feats = _batched_encode(fn, tiles[mag], spec.batch_size, seeds, grids)  # (n, n_t * Σc), t-major
            out[f"{cond}|{mag}"] = feats.reshape(len(feats), n_t, -1).mean(0)
    return out


def baseline_slide_means(encoders: dict, tiles: dict, bs: int) -> dict[str, np.ndarray]:
    """``{f"{name}|{mag}": (1, D)}`` slide means of baseline encoders on the same tiles."""
    out = {}
    for name, enc in encoders.items():
        for mag in ("20x", "5x"):
            out[f"{name}|{mag}"] = _batched_encode(enc.encode, tiles[mag], bs).mean(0, keepdims=True)
    return out


def cache_signature(spec: SweepSpec, model_sha: str | None) -> str:
    keys = {k: v for k, v in asdict(spec).items() if k in ("blocks", "t", "conditioning", "baselines",
                                                              "tiles_per_slide", "ssl_encoder", "seed")}
    keys["blocks"] = sorted(keys["blocks"])
    return hashlib.sha256(json.dumps({"spec": keys, "model": model_sha}, sort_keys=True).encode()).hexdigest()[:16]


def slide_signature(sig: str, slide: Path, tiles_dir: Path) -> str:
    """``sig`` (the sweep settings and every weight) plus what this slide's means are made from: the slide's
    :func:`~zoomfeat.io.file_fingerprint` and its coordinate file's sha256 (``zoomfeat.extract.input_record``), so
    a slide replaced (with or without re-tiling) is not answered from the cache. No coordinate file: the slide's
    fingerprint alone (the slide then fails when read)."""
    try:
        coords = find_coords(tiles_dir, slide_id(slide))
    except (FileNotFoundError, ValueError):
        coords = None
    rec = input_record(slide, coords)
    return hashlib.sha256(json.dumps({"sig": sig, **rec}, sort_keys=True).encode()).hexdigest()[:16]


def load_cached(path: Path, signature: str) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__signature__"]) != signature:
                return None
            return {k: z[k] for k in z.files if k != "__signature__"}
    except (OSError, ValueError, KeyError):
        return None


def save_cached(path: Path, signature: str, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __signature__=np.array(signature), **arrays)


# ------------------------------------------------------------------------------------------------ labels, splits
def load_probe_labels(labels: str | os.PathLike, slides: Sequence[str], tasks: Sequence[str]):
    """Labels CSV → (DataFrame indexed by slide with a ``patient`` column, {task: target array}) for ``slides``."""
    import pandas as pd

    df = pd.read_csv(labels)
    if "slide" not in df.columns:
        raise ValueError(f"{labels}: needs a 'slide' column")
    df["slide"] = df["slide"].astype(str)
    df = df.set_index("slide").reindex(list(slides))
    if "patient" not in df.columns:
        df["patient"] = df.index
    df["patient"] = df["patient"].fillna(pd.Series(df.index, index=df.index)).astype(str)
    targets = {}
    for task in tasks:
        if task == "survival":
            if not {"time", "event"} <= set(df.columns):
                raise ValueError(f"{labels}: task 'survival' needs 'time' and 'event' columns")
            targets[task] = df[["time", "event"]].to_numpy(float)
        elif task not in df.columns:
            raise ValueError(f"{labels}: no column for task {task!r} (columns: {', '.join(map(str, df.columns))})")
        else:
            targets[task] = df[task].to_numpy()
    return df, targets


def tune_report_split(patients: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over slides: True = tuning patients, one fold of a stratified group k-fold with
    k = round(1 / fraction) (0.5 → half, 0.33 → a third, 0.25 → a quarter of the patients)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if fraction <= 0:
        return np.zeros(len(patients), bool)
    k = max(2, int(round(1 / fraction)))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 7919)
    _, tune = next(cv.split(np.zeros(len(patients)), strata, patients))
    mask = np.zeros(len(patients), bool)
    mask[tune] = True
    return mask


# ------------------------------------------------------------------------------------------------ evaluation
def _feature_sets(means: dict[str, dict[str, np.ndarray]], slides: list[str], spec: SweepSpec, chans: dict[int, int]):
    """Yield (row keys, X) for every zoomldm (block, t, cond, mag) and baseline mag, X = (n_slides, D)."""
    order = sorted(spec.blocks)
    offs = np.cumsum([0] + [chans[b] for b in order])
    for cond in spec.conditioning:
        per_mag = {m: np.stack([means[s][f"{cond}|{m}"] for s in slides]) for m in ("20x", "5x")}  # (n, n_t, C)
        for ti, t in enumerate(spec.t):
            for bi, b in enumerate(order):
                sl = slice(offs[bi], offs[bi + 1])
                x = {m: per_mag[m][:, ti, sl] for m in per_mag}
                for mag in spec.mags:
                    X = np.concatenate([x["20x"], x["5x"]], 1) if mag == "20x+5x" else x[mag]
                    yield {"encoder": ZOOMLDM, "block": b, "t": t, "conditioning": cond, "mag": mag}, X
    for name in spec.baselines:
        x = {m: np.stack([means[s][f"{name}|{m}"][0] for s in slides]) for m in ("20x", "5x")}
        for mag in spec.mags:
            X = np.concatenate([x["20x"], x["5x"]], 1) if mag == "20x+5x" else x[mag]
            yield {"encoder": name, "block": "", "t": "", "conditioning": "", "mag": mag}, X


def evaluate(sets, targets: dict, patients: np.ndarray, mask: np.ndarray, spec: SweepSpec, subset: str,
             alpha_bar: dict[int, float], jobs: int | None = None) -> tuple[list[dict], dict]:
    """Probe every feature set on the slides in ``mask``; returns probe.csv rows and per-split scores by key.
    Feature sets are independent jobs (:func:`zoomfeat.jobs.run_jobs` on ``jobs`` workers; same output for any)."""
    idx = np.flatnonzero(mask)
    splits = {}
    for task, y in targets.items():
        yy = y[idx]
        yy = yy if task == "survival" else np.unique(yy.astype(str), return_inverse=True)[1]
        splits[task] = (yy, repeated_splits(yy, patients[idx], spec.n_folds, spec.n_repeats, spec.seed))
    calls = [(probe_feature_set, (keys, X[idx], splits, subset, alpha_bar), {}) for keys, X in sets]
    rows, scores = [], {}
    for r, sc in run_jobs(calls, jobs):
        rows += r
        scores.update(sc)
    return rows, scores


def choose_recipe(rows: list[dict], task: str, subset: str) -> dict:
    """The zoomldm row with the best mean on ``task`` within ``subset`` (ties: lower t, then lower block)."""
    cand = [r for r in rows if r["encoder"] == ZOOMLDM and r["task"] == task and r["subset"] == subset
            and np.isfinite(r["mean"])]
    if not cand:
        raise RuntimeError(f"no finite probe score for task {task!r}; nothing to choose from")
    return max(cand, key=lambda r: (round(r["mean"], 6), -int(r["t"]), -int(r["block"])))


# ------------------------------------------------------------------------------------------------ outputs
def write_rows(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=PROBE_COLUMNS).to_csv(tmp, index=False, float_format="%.4f")
    return path


def write_scores(scores: dict, path: Path) -> Path:
    """Per-split scores (same splits for every feature set of a task and subset): input of paired tests."""
    import pandas as pd

    recs = [dict(zip(("subset", "task", "encoder", "block", "t", "conditioning", "mag"), k), split=i, score=v)
            for k, sc in scores.items() for i, v in enumerate(sc)]
    with atomic_path(path) as tmp:
        pd.DataFrame(recs).to_csv(tmp, index=False, float_format="%.5f")
    return path


def plot_heatmaps(rows: list[dict], out_dir: Path, spec: SweepSpec, subset: str) -> list[Path]:
    """One PNG per task and mag: block × t, one panel per conditioning, cells annotated with the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    blocks, ts = sorted(spec.blocks), list(spec.t)
    ab = {r["t"]: r["alpha_bar"] for r in rows if r["encoder"] == ZOOMLDM}
    for task in spec.tasks:
        for mag in spec.mags:
            fig, axes = plt.subplots(1, len(spec.conditioning), squeeze=False, layout="constrained",
                                     figsize=(2.2 + 0.8 * len(ts) * len(spec.conditioning), 1.9 + 0.32 * len(blocks)))
            for k, (ax, cond) in enumerate(zip(axes[0], spec.conditioning)):
                grid = np.full((len(blocks), len(ts)), np.nan)
                for r in rows:
                    if (r["encoder"], r["task"], r["mag"], r["conditioning"], r["subset"]) == (ZOOMLDM, task, mag, cond, subset):
                        grid[blocks.index(r["block"]), ts.index(r["t"])] = r["mean"]
                im = ax.imshow(grid, vmin=0.4 if task != "survival" else 0.4, vmax=1.0, cmap="viridis", aspect="auto")
                for i in range(len(blocks)):
                    for j in range(len(ts)):
                        if np.isfinite(grid[i, j]):
                            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                    color="white" if grid[i, j] < 0.75 else "black")
                ax.set_xticks(range(len(ts)), [f"{t}\n{100 * (1 - ab.get(t, 1)):.0f}%" for t in ts], fontsize=7)
                ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
                ax.set_xlabel("t / % of variance that is noise", fontsize=8)
                if k == 0:
                    ax.set_ylabel("block (0 = middle, 1.. = decoder)", fontsize=8)
                ax.set_title(f"conditioning: {cond}", fontsize=9)
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="AUC" if task != "survival" else "c-index")
            fig.suptitle(f"linear probe, {task}, {mag} ({subset} patients)", fontsize=10)
            p = out_dir / f"heatmap_{task}_{mag}.png"
            with atomic_path(p) as tmp:
                fig.savefig(tmp, dpi=90, format="png")
            plt.close(fig)
            paths.append(p)
    return paths


def write_best_recipe(best: dict, path: Path, weights: str | None, ssl_encoder: str, report: dict | None) -> Path:
    """``zoomfeat extract --config`` YAML of the chosen recipe (numbers in comments: extract rejects unknown keys)."""
    import yaml

    enc = {"name": ZOOMLDM, "blocks": [int(best["block"])], "t": [int(best["t"])],
           "conditioning": best["conditioning"]}
    if weights:
        enc["weights"] = str(weights)
    if best["conditioning"] == "uni":
        enc["ssl_encoder"] = ssl_encoder
    cfg = {"encoder": enc, "mags": "20x,5x"}
    head = [f"# ZoomLDM recipe chosen by `zoomfeat probe` on {best['subset']} patients: task {best['task']}, "
            f"mag {best['mag']}, {best['metric']} {best['mean']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}]",
            f"# t = {best['t']}: alpha_bar = {best['alpha_bar']:.3f} ({best['noise_pct']:.1f}% of the variance is noise)"]
    if report:
        head.append(f"# on held-out report patients: {report['metric']} {report['mean']:.3f} "
                    f"[{report['ci_low']:.3f}, {report['ci_high']:.3f}] (n = {report['n_slides']} slides)")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(head) + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the sweep
def _encoders(spec: SweepSpec, ldm, ssl_weights, registry, custom_model):
    ssl = None
    if "uni" in spec.conditioning:  # the encoder's own precision (the probe's UNet pass sets its own)
        ssl = ssl_encoder_for(ldm, spec.ssl_encoder, ssl_weights, registry)
    base = {}
    for name in spec.baselines:
        kw = {"model": custom_model} if name == "custom" else {}
        base[name] = create_encoder(name, registry=registry, **kw)
    return ssl, base


def encoder_identity(enc) -> dict | None:
    """What makes an encoder's features what they are: its recorded config and weights hash (the hash of its
    parameters when it records none, e.g. a plugin or a ``--custom-model`` built in code)."""
    if enc is None:
        return None
    sha = getattr(enc, "weights_sha256", None)
    model = getattr(enc, "model", None)
    from torch import nn

    if sha is None and isinstance(model, nn.Module):
        sha = state_dict_sha256(model)
    return {"config": enc.full_config(), "weights_sha256": sha}


def compute_means(slides: list[Path], tiles_dir: Path, cache_dir: Path, ldm, spec: SweepSpec, model_sha: str | None,
                  ssl_encoder, baselines: dict, progress: bool = True,
                  jobs: int | None = None) -> tuple[dict, list[dict]]:
    """Slide means for every slide (cached per slide); per-slide failures are collected, the cohort continues.
    On a CPU the slides not cached yet are split over ``jobs`` worker processes (one model copy each, one
    chunk per worker, :func:`slide_means_chunk`); the result keeps the order of ``slides`` either way."""
    sig = cache_signature(spec, model_sha)
    sigs, cached = {}, {}
    for s in slides:
        sid = slide_id(s)
        try:  # each cache entry is also keyed by the slide and its coordinate file: a replaced slide is redone
            sigs[sid] = slide_signature(sig, s, tiles_dir)
        except (OSError, ValueError) as exc:
            cached[sid] = f"{type(exc).__name__}: {exc}"
            print(f"probe: {sid} failed ({cached[sid]}); continuing")
            continue
        cached[sid] = load_cached(cache_dir / f"{sid}.npz", sigs[sid])
    pending = [s for s in slides if cached[slide_id(s)] is None]
    n = worker_count(jobs, len(pending))
    if n and next(ldm.parameters()).device.type != "cpu":
        n = 0  # a GPU model stays in this process
    if n:
        chunks = [pending[i::n] for i in range(n)]
        parts = run_jobs([(slide_means_chunk, (c, tiles_dir, cache_dir, ldm, spec, sigs, ssl_encoder, baselines),
                           {}) for c in chunks], n)
        done = {k: v for part in parts for k, v in part.items()}
    else:
        done = slide_means_chunk(pending, tiles_dir, cache_dir, ldm, spec, sigs, ssl_encoder, baselines, progress)
    means, failed = {}, []
    for slide in slides:
        sid = slide_id(slide)
        got = cached[sid] if cached[sid] is not None else done[sid]
        if isinstance(got, str):
            failed.append({"slide": sid, "error": got})
        else:
            means[sid] = got
    return means, failed


def slide_means_chunk(slides: list[Path], tiles_dir: Path, cache_dir: Path, ldm, spec: SweepSpec, sigs: dict,
                      ssl_encoder, baselines: dict, progress: bool = False) -> dict:
    """{slide id: slide means (also cached to ``cache_dir/{id}.npz`` under its signature ``sigs[id]``) or the
    error text of a failed slide}."""
    import torch
    from tqdm.auto import tqdm

    out = {}
    for slide in tqdm(slides, desc="probe features", unit="slide", disable=not progress):
        sid = slide_id(slide)
        try:
            grid, _ = load_grid(slide, tiles_dir, cache_dir, ExtractOptions())  # zoomfeat, CLAM or TRIDENT
            tiles = read_probe_tiles(slide, grid, spec.tiles_per_slide, spec.seed, "uni" in spec.conditioning)
            with torch.inference_mode():
                got = zoomldm_slide_means(ldm, tiles, sid, spec, ssl_encoder)
                got.update(baseline_slide_means(baselines, tiles, spec.batch_size))
        except Exception as exc:  # noqa: BLE001 — one bad slide must not stop the sweep
            out[sid] = f"{type(exc).__name__}: {exc}"
            print(f"probe: {sid} failed ({out[sid]}); continuing")
            continue
        save_cached(cache_dir / f"{sid}.npz", sigs[sid], got)
        out[sid] = got
    return out


def sweep(slides, tiles: str | os.PathLike, labels: str | os.PathLike, weights: str | os.PathLike,
          out: str | os.PathLike, spec: SweepSpec | None = None, ssl_weights=None, registry=None,
          custom_model: str | None = None, progress: bool = True, official_config: str | os.PathLike | None = None,
          ema: bool = True, device: str = "cpu", jobs: int | None = None) -> dict:
    """Run the recipe sweep (see the module docstring); returns paths, the chosen recipe and its report row.
    ``weights``: a ZoomLDM folder, or an official .ckpt (+ ``official_config``, ``ema``) as ``ZoomLDM.load``.
    ``device``: where the forwards run (``auto``: this rank's GPU if any; :func:`zoomfeat.precision.resolve_device`).
    ``jobs``: worker processes for the probe's evaluation (:func:`evaluate`; the outputs do not depend on it)."""
    import pandas as pd

    spec = spec or SweepSpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slide_list = resolve_slides(slides) if not isinstance(slides, (list, tuple)) else [Path(s) for s in slides]
    if not slide_list:
        raise FileNotFoundError(f"no slides found in {slides}")

    dev = resolve_device(device)
    ldm = ZoomLDM.load(weights, official_config, ema=ema).eval().to(dev)
    chans = {b.index: b.channels for b in ldm.feature_blocks()}
    bad = [b for b in spec.blocks if b not in chans]
    if bad:
        raise ValueError(f"blocks must be in 0..{max(chans)}, got {bad}")
    ssl, base = _encoders(spec, ldm, ssl_weights, registry, custom_model)
    for enc in ([ssl] if ssl is not None else []) + list(base.values()):
        enc.to(dev)
    # the per-slide cache is keyed by every weight that shapes a feature: the model, the SSL encoder, the baselines
    model_key = json.dumps({"ldm": sha256_file(weights) + ("" if ema else ":online"), "ssl": encoder_identity(ssl),
                            "baselines": {n: encoder_identity(e) for n, e in base.items()}},
                           sort_keys=True, default=str)
    means, failed = compute_means(slide_list, Path(tiles), out / "cache", ldm, spec, model_key, ssl, base,
                                  progress, jobs)
    df, targets = load_probe_labels(labels, list(means), spec.tasks)
    keep = np.ones(len(df), bool)
    for task, y in targets.items():
        keep &= np.isfinite(y.astype(float)).all(axis=1) if y.ndim == 2 else pd.notna(y)
    sids = [s for s, k in zip(df.index, keep) if k]
    df, targets = df.loc[sids], {t: y[keep] for t, y in targets.items()}
    patients = df["patient"].to_numpy(str)
    y_sel = targets[spec.select_task]
    tune = tune_report_split(patients, y_sel[:, 1].astype(int) if y_sel.ndim == 2 else y_sel.astype(str),
                             spec.tune_fraction, spec.seed)
    alpha = {int(t): float(ldm.alphas_cumprod[int(t)]) for t in spec.t}
    subset = "tune" if tune.any() else "all"
    rows, scores = evaluate(_feature_sets(means, sids, spec, chans), targets, patients,
                            tune if tune.any() else ~tune, spec, subset, alpha, jobs)
    best = choose_recipe(rows, spec.select_task, subset)
    report_row = None
    if tune.any():  # the chosen recipe (all mags), each task's own best cell and the baselines, on unseen patients
        r2, s2 = report_rows(means, sids, spec, chans, rows, best, targets, patients, ~tune, alpha, subset, jobs)
        rows += r2
        scores.update(s2)
        report_row = next(r for r in r2 if r["encoder"] == ZOOMLDM and r["task"] == best["task"]
                          and r["mag"] == best["mag"] and r["block"] == best["block"] and r["t"] == best["t"]
                          and r["conditioning"] == best["conditioning"])
    write_rows(rows, out / "probe.csv")
    write_scores(scores, out / "probe_scores.csv")
    heat = plot_heatmaps(rows, out, spec, subset)
    write_best_recipe(best, out / "best_recipe.yaml", str(weights), spec.ssl_encoder, report_row)
    split_df = pd.DataFrame({"slide": sids, "patient": patients, "subset": np.where(tune, "tune", "report")})
    with atomic_path(out / "split_patients.csv") as tmp:
        split_df.to_csv(tmp, index=False)
    summary = {"best": best, "report": report_row, "n_slides": len(sids), "failed": failed,
               "spec": asdict(spec), "heatmaps": [str(p) for p in heat]}
    write_json_atomic(out / "probe_summary.json", summary)
    return {**summary, "probe_csv": str(out / "probe.csv"), "best_recipe": str(out / "best_recipe.yaml"),
            "split_patients": str(out / "split_patients.csv")}


def run_probe(slides, cfg: ProbeConfig, jobs: int | None = None) -> dict:
    """`zoomfeat probe`: :func:`sweep` of ``slides`` with every setting from one :class:`ProbeConfig`."""
    missing = [n for n in ("tiles", "labels", "out", "weights") if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"--{missing[0]} is required (on the command line or in --config)")
    if cfg.encoder not in (None, ZOOMLDM):
        raise ValueError(f"--encoder: the probe sweeps ZoomLDM recipes only ({ZOOMLDM!r}), got {cfg.encoder!r}")
    return sweep(slides, cfg.tiles, cfg.labels, cfg.weights, cfg.out, cfg.sweep_spec(), ssl_weights=cfg.ssl_weights,
                 registry=cfg.weights_registry, custom_model=cfg.custom_model, progress=cfg.progress,
                 official_config=cfg.official_config, ema=cfg.ema, device=cfg.device, jobs=jobs)


def report_rows(means, sids, spec: SweepSpec, chans, rows, best, targets, patients, mask, alpha, subset, jobs=None):
    """Score on the report patients: the chosen recipe on every task, each other task's own best tuning cell on
    that task (a recipe is per task), and the baselines once."""
    picks = [(best, list(targets), True)]
    for task in targets:
        b = choose_recipe(rows, task, subset)
        if (b["block"], b["t"], b["conditioning"]) != (best["block"], best["t"], best["conditioning"]):
            picks.append((b, [task], False))
    out_rows, out_scores = [], {}
    for cell, tasks, with_base in picks:
        pick = SweepSpec(**{**asdict(spec), "blocks": [cell["block"]], "t": [cell["t"]],
                            "conditioning": [cell["conditioning"]], "baselines": spec.baselines if with_base else [],
                            "tasks": list(spec.tasks), "select_task": spec.select_task})
        sub = {s: {**means[s], **_subset_means(means[s], spec, cell, chans)} for s in sids}
        r, sc = evaluate(_feature_sets(sub, sids, pick, {cell["block"]: chans[cell["block"]]}),
                         {t: targets[t] for t in tasks}, patients, mask, pick, "report", alpha, jobs)
        out_rows += r
        out_scores.update(sc)
    return out_rows, out_scores


def _subset_means(m: dict, spec: SweepSpec, best: dict, chans: dict[int, int]) -> dict:
    """One slide's cached means cut down to the chosen (t, block) of its conditioning: keys ``cond|mag``."""
    order = sorted(spec.blocks)
    offs = np.cumsum([0] + [chans[b] for b in order])
    bi, ti = order.index(best["block"]), list(spec.t).index(best["t"])
    c = best["conditioning"]
    return {f"{c}|{mag}": m[f"{c}|{mag}"][ti:ti + 1, offs[bi]:offs[bi + 1]] for mag in ("20x", "5x")}
