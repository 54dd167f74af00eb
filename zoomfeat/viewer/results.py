"""What the viewer shows, read from a ``mil cv`` or ``compare`` output folder (or a folder holding several).

A *run* is one folder with ``predictions.csv`` (out-of-fold predictions of one head on one bag folder × task).
``mil cv`` leaves its ``config.yaml`` and ``attention/{slide}.csv`` in that folder; ``compare`` keeps one
``config.yaml`` at its root (``{root}/{encoder}/{task}``) and saves no attention, so the viewer recomputes
attention from the fold checkpoint that scored the slide (``fold{k}/best.pt``) on the slide's bag — the same
forward pass ``mil cv`` uses (checked against its CSVs in the tests).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mil.data import features_tensor, load_standardizer, read_features
from mil.folds import head_hparams
from mil.heatmap import bag_instances, rank_normalize
from mil.models import build_model
from mil.tasks import make_task
from zoomfeat.bags import list_bags, load_bag, read_bag_attrs
from zoomfeat.names import SlideIdError, check_slide_id, find_slide, label_slide_paths
from zoomfeat.slides.coords import coords_path, geojson_path, read_coords
from zoomfeat.weights import torch_load_tensors

SKIP_DIRS = {"attention", "heatmaps", "wandb", "qupath", ".locks"}


@dataclass
class Run:
    """One trained configuration: a head on one bag folder and one task, with out-of-fold predictions."""

    name: str
    path: Path
    cfg: dict
    predictions: pd.DataFrame
    bags: Path | None
    mag: str
    model: str
    task: str
    encoder: str
    target: str
    bag_encoder: str | None = None  # sub-folder choice of ``list_bags`` (features_{encoder})

    @property
    def survival(self) -> bool:
        return "risk" in self.predictions.columns

    @property
    def n_classes(self) -> int:
        return sum(c.startswith("prob_") for c in self.predictions.columns)

    @functools.cached_property
    def classes(self) -> list[str]:
        """Class names by index (computed once: per-slide records ask for them for every slide)."""
        if self.survival:
            return []
        lab = self.predictions.drop_duplicates("y").set_index("y")["label"].astype(str).to_dict()
        return [lab.get(k, str(k)) for k in range(self.n_classes)]

    @functools.cached_property
    def slides(self) -> frozenset[str]:
        """The slides this run predicted (membership tests per slide page / export)."""
        return frozenset(self.predictions["slide"])

    @functools.cached_property
    def by_slide(self) -> pd.DataFrame:
        """The predictions indexed by slide (first row per slide)."""
        return self.predictions.drop_duplicates("slide").set_index("slide")

    def meta(self) -> dict:
        return {"name": self.name, "model": self.model, "encoder": self.encoder, "task": self.task,
                "target": self.target, "mag": self.mag, "classes": self.classes}


@dataclass
class Attention:
    """Per-instance attention of one run on one slide, in level-0 px (``size`` = the instance's side)."""

    x: np.ndarray
    y: np.ndarray
    size: float
    score: np.ndarray
    rank: np.ndarray  # rank-normalised score in (0, 1], 1 = most attended (what heatmaps colour)

    @property
    def order(self) -> np.ndarray:
        """1 = most attended instance."""
        return (np.argsort(np.argsort(-self.score, kind="stable"), kind="stable") + 1).astype(int)


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """``path`` with every symlink resolved when it lies inside ``root`` (also resolved), else None: the viewer
    reads, serves and exports only such files (a run folder received from someone else may name any file)."""
    base = Path(os.path.realpath(root))
    p = Path(os.path.realpath(path))
    return p if p == base or base in p.parents else None


def _load_yaml(path: Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def resolve_path(p: Any, anchors: list[Path]) -> Path | None:
    """A path saved in a config, found as given (absolute or from the cwd) or relative to one of ``anchors``."""
    if p in (None, "", "None"):
        return None
    q = Path(str(p))
    if q.exists():
        return q
    if not q.is_absolute():
        for a in anchors:
            for base in [a, *a.parents]:
                if (base / q).exists():
                    return base / q
    return None


def _run_config(leaf: Path, root: Path) -> tuple[dict, dict]:
    """(run config, encoder entry) of a run folder: its own config.yaml (mil cv) or the compare root's."""
    own = leaf / "config.yaml"
    if own.exists():
        cfg = _load_yaml(own)
        if not cfg.get("encoders"):
            return cfg, {"name": cfg.get("encoder") or Path(str(cfg.get("bags") or "bags")).name,
                         "bags": cfg.get("bags"), "mag": cfg.get("mag", "20x"), "encoder": cfg.get("encoder")}
    for anc in [leaf.parent.parent, *leaf.parent.parent.parents]:
        cp = anc / "config.yaml"
        if cp.exists():
            cfg = _load_yaml(cp)
            # compare writes {root}/{encoder}/{task}, or {root}/{encoder}/{framework}/{task} with several frameworks
            parts = leaf.relative_to(anc).parts[:-1]
            entry = next((e for e in cfg.get("encoders") or [] if e.get("name") in parts), None)
            task = next((t for t in cfg.get("tasks") or [] if t.get("name") == leaf.name), None)
            if entry is not None and task is not None:
                return {**cfg, **{k: v for k, v in task.items() if k != "name"}}, entry
        if anc == root:
            break
    return {}, {"name": leaf.name, "bags": None, "mag": "20x"}


def discover_runs(run_dir: str | os.PathLike) -> list[Run]:
    """Every folder under ``run_dir`` holding ``predictions.csv``, as a :class:`Run` (sorted by name)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder not found: {root}")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith((".", "fold")))
        if "predictions.csv" not in filenames:
            continue
        leaf = Path(dirpath)
        pred = safe_rows(pd.read_csv(leaf / "predictions.csv", dtype={"slide": str, "patient": str}), leaf)
        if pred.empty or "slide" not in pred.columns or "fold" not in pred.columns:
            continue  # not a `mil cv` / `compare` run (e.g. `mil predict` output: no out-of-fold models)
        cfg, entry = _run_config(leaf, root)
        rel = leaf.relative_to(root).as_posix()
        name = rel if rel != "." else root.name
        task = str(cfg.get("task") or ("survival" if "risk" in pred.columns else "binary"))
        runs.append(Run(name=name, path=leaf, cfg=cfg, predictions=pred,
                        bags=resolve_path(entry.get("bags"), [leaf, root]), mag=str(entry.get("mag") or "20x"),
                        model=_run_model(cfg, rel), task=task, encoder=str(entry.get("name") or "?"),
                        target=str(cfg.get("target") or ("survival" if task == "survival" else task)),
                        bag_encoder=entry.get("encoder")))
    if not runs:
        raise FileNotFoundError(f"no predictions.csv under {root}: pass the output folder of `zoomfeat mil cv` "
                                "or `zoomfeat compare`")
    return sorted(runs, key=lambda r: r.name)


def safe_rows(pred: pd.DataFrame, leaf: Path) -> pd.DataFrame:
    """Predictions whose slide id is a plain file-name stem (``zoomfeat.names.check_slide_id``): an id such as
    ``../../x`` would name files outside the run (attention CSVs, exported pages), so its rows are dropped."""
    if "slide" not in pred.columns:
        return pred
    ok = pred["slide"].map(lambda s: isinstance(s, str) and _safe_id(s))
    if not ok.all():
        warnings.warn(f"{leaf / 'predictions.csv'}: {int((~ok).sum())} row(s) with an unsafe slide id ignored "
                      f"(e.g. {pred.loc[~ok, 'slide'].iloc[0]!r})", stacklevel=2)
    return pred[ok].reset_index(drop=True)


def _safe_id(sid: str) -> bool:
    try:
        check_slide_id(sid)
    except SlideIdError:
        return False
    return True


def _run_model(cfg: dict, rel: str) -> str:
    """The head of a run: ``compare`` trains each of its ``frameworks`` (a path component when there are several),
    ``mil cv`` its ``model``."""
    fws = [str(f).lower() for f in (cfg.get("frameworks") or [])]
    if len(fws) == 1:
        return fws[0]
    for part in reversed(rel.split("/")):
        if part.lower() in fws:
            return part.lower()
    return str(cfg.get("model") or "?")


def _bag_files(run: Run) -> dict[str, Path]:
    if run.bags is None:
        return {}
    try:
        return list_bags(run.bags, encoder=run.bag_encoder)
    except (FileNotFoundError, ValueError):
        return {}


def fold_model(run: Run, fold: int, dim: int):
    """The head that scored fold ``fold``'s test slides, rebuilt exactly as ``mil.cv.run_folds`` built it."""
    ckpt = run.path / f"fold{fold}" / "best.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{run.name}: no checkpoint {ckpt}")
    _, (head, topts) = head_hparams(run.model, run.mag, dim, dict(run.cfg.get("hparams") or {}), run.task)
    task = make_task(run.task, n_classes=max(run.n_classes, 2), options=topts)  # as mil cv built the head
    net = build_model(run.model, dim, task.n_out, options=head)
    net.load_state_dict(torch_load_tensors(ckpt))  # a pickled best.pt: UnsafeCheckpointError (no attention)
    return net.eval(), task, load_standardizer(ckpt.parent / "standardize.npz")


class Results:
    """Runs + slides + where the WSIs, tiles and generated patches are; attention is computed once and cached."""

    def __init__(self, run_dir: str | os.PathLike, slides: str | os.PathLike | None = None,
                 tiles: str | os.PathLike | None = None, generated: str | os.PathLike | None = None):
        self.root = Path(run_dir)
        self.runs = discover_runs(self.root)
        self.by_name = {r.name: r for r in self.runs}
        self.slides_dir = Path(slides) if slides else None
        self.tiles_arg = Path(tiles) if tiles else None
        if self.slides_dir is not None and not self.slides_dir.exists():
            raise FileNotFoundError(f"--slides folder not found: {self.slides_dir}")
        if self.tiles_arg is not None and not self.tiles_arg.is_dir():
            raise FileNotFoundError(f"--tiles folder not found: {self.tiles_arg}")
        self.bags = {r.name: _bag_files(r) for r in self.runs}
        self.labels_csv = self._labels_csv()
        self.labels = self._labels()
        self._label_paths = label_slide_paths(self.labels_csv)
        ids = sorted({s for r in self.runs for s in r.predictions["slide"]})
        self.slide_ids = ids
        self._lock = threading.RLock()
        self._attention: dict[tuple[str, str], Attention | None] = {}
        self._models: dict[tuple[str, int], Any] = {}
        self._grids: dict[str, Any] = {}
        self._rows: dict[str, dict] | None = None
        self._sizes: dict[str, tuple[float, float] | None] = {}
        self.generated = find_generated(generated, self.root)

    # ------------------------------------------------------------------------------------------ slides
    def _labels_csv(self) -> Path | None:
        """The first labels CSV named by a run config."""
        for r in self.runs:
            p = resolve_path(r.cfg.get("labels"), [r.path, self.root])
            if p is not None and p.is_file():
                return p
        return None

    def _labels(self) -> pd.DataFrame:
        """The labels CSV, slide-indexed (empty without one)."""
        if self.labels_csv is None:
            return pd.DataFrame(columns=["slide"]).set_index("slide")
        return pd.read_csv(self.labels_csv, dtype={"slide": str, "patient": str}).drop_duplicates("slide") \
            .set_index("slide")

    def slide_path(self, sid: str) -> Path | None:
        """The WSI: ``--slides`` folder, else the labels CSV's ``path`` column, else the tiling record."""
        p = find_slide(self.slides_dir, sid) or self._label_paths.get(sid)
        if p is None:
            cp = self.coords_file(sid)
            if cp is not None:
                import h5py

                with h5py.File(cp, "r") as h5:
                    v = h5.attrs.get("slide_path")
                q = Path(v.decode() if isinstance(v, bytes) else str(v)) if v is not None else None
                p = q if q is not None and q.is_file() else None
        return p

    def slide_size(self, sid: str) -> tuple[float, float] | None:
        """Level-0 (width, height) of the WSI, else the extent of the tiling grid; None when neither is found."""
        with self._lock:
            if sid not in self._sizes:
                self._sizes[sid] = self._read_size(sid)
            return self._sizes[sid]

    def _read_size(self, sid: str) -> tuple[float, float] | None:
        p = self.slide_path(sid)
        if p is not None:
            import openslide

            try:
                with openslide.open_slide(str(p)) as osr:
                    w, h = osr.dimensions
                return float(w), float(h)
            except Exception:  # noqa: BLE001 - an unreadable WSI falls back to the grid, as the viewer's pages do
                pass
        g = self.grid(sid)
        if g is None:
            return None
        ext = g["coords"].max(axis=0) + g["size"]
        return float(ext[0]), float(ext[1])

    def bag_file(self, sid: str) -> Path | None:
        for files in self.bags.values():
            if sid in files:
                return files[sid]
        return None

    def coords_file(self, sid: str) -> Path | None:
        """The tiling coordinate file: ``--tiles`` folder, else the one the bag was extracted from."""
        if self.tiles_arg is not None:
            p = coords_path(self.tiles_arg, sid)
            return p if p.exists() else None
        bag = self.bag_file(sid)
        if bag is not None and bag.suffix == ".h5":
            v = read_bag_attrs(bag).get("coords_file")
            q = resolve_path(v, [bag.parent]) if v else None
            return q
        return None

    def tissue_geojson(self, sid: str) -> Path | None:
        cp = self.coords_file(sid)
        if cp is None:
            return None

        try:
            p = geojson_path(cp.parent.parent, sid)
        except SlideIdError:  # an id that could leave the folder has no tissue file to read
            return None
        return p if p.exists() else None

    def grid(self, sid: str) -> dict | None:
        """20x tiles and 5x regions (level-0 px) + each tile's parent row, from the tiles or the bag."""
        with self._lock:
            if sid in self._grids:
                return self._grids[sid]
            g = self._read_grid(sid)
            self._grids[sid] = g
            return g

    def _read_grid(self, sid: str) -> dict | None:
        """From the tiling's coordinate file, else from the slide's bag (sides as :func:`mil.heatmap.bag_instances`
        reads them: ``patch_size_level0_5x`` when recorded, else 4× the 20x side; 256 px when nothing is)."""
        cp = self.coords_file(sid)
        if cp is not None:
            tg = read_coords(cp)
            c5 = tg.coords_5x
            return {"coords": np.asarray(tg.coords), "size": float(tg.patch_size_level0),
                    "coords_5x": None if c5 is None else np.asarray(c5),
                    "size_5x": float(tg.patch_size_level0_5x) if c5 is not None else None,
                    "parent": None if tg.parent_index is None else np.asarray(tg.parent_index)}
        bag = self.bag_file(sid)
        if bag is None:
            return None

        b = load_bag(bag)
        if b.coords is None or b.coords_unit != "px":
            return None
        size = float(bag_instances(b, "20x")[1] or 256)
        size_5x = float(bag_instances(b, "5x")[1] or 4 * size) if b.coords_5x is not None else None
        return {"coords": b.coords, "size": size, "coords_5x": b.coords_5x, "size_5x": size_5x,
                "parent": b.parent_index}

    # --------------------------------------------------------------------------------------- attention
    def attention(self, run_name: str, sid: str) -> Attention | None:
        """Saved (``attention/{slide}.csv``) or recomputed attention of one run on one slide; None if impossible."""
        key = (run_name, sid)
        with self._lock:
            if key not in self._attention:
                try:
                    self._attention[key] = self._read_attention(self.by_name[run_name], sid)
                except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError):
                    self._attention[key] = None
            return self._attention[key]

    def load_bag(self, run: Run, sid: str):
        """The run's bag of ``sid`` read once (features and coordinates both come from it)."""
        path = self.bags[run.name].get(sid)
        if path is None:
            raise FileNotFoundError(f"{run.name}: no bag for {sid}")
        return load_bag(path)

    @staticmethod
    def _instances(run: Run, bag) -> tuple[np.ndarray | None, float]:
        """The run's instances in ``bag`` (level-0 corners) and their side (256 px, or 4× that at 5x, when the bag
        does not record it)."""
        coords, size = bag_instances(bag, run.mag)
        return coords, float(size or (4 * 256 if run.mag == "5x" else 256))

    def _read_attention(self, run: Run, sid: str) -> Attention | None:
        csv = run.path / "attention" / f"{sid}.csv"
        if csv.exists():
            df = pd.read_csv(csv)
            if len(df) and (df["x"] >= 0).all():
                size = self._instances(run, self.load_bag(run, sid))[1] if sid in self.bags[run.name] \
                    else self._guess(sid)
                return Attention(df["x"].to_numpy(float), df["y"].to_numpy(float), size,
                                 df["score"].to_numpy(float), df["rank"].to_numpy(float))
        row = run.predictions[run.predictions["slide"] == sid]
        if row.empty:
            return None
        bag = self.load_bag(run, sid)
        scores = self.compute_attention(run, sid, int(row["fold"].iloc[0]), bag=bag)["attention"]
        coords, size = self._instances(run, bag)
        if coords is None or len(coords) != len(scores):
            return None
        return Attention(coords[:, 0].astype(float), coords[:, 1].astype(float), size, scores, rank_normalize(scores))

    def _guess(self, sid: str) -> float:
        g = self.grid(sid)
        return g["size"] if g else 256.0

    def compute_attention(self, run: Run, sid: str, fold: int, bag=None) -> dict[str, np.ndarray]:
        """Forward the slide's bag (``bag``: already loaded, else read here) through its fold's head: attention (N,)
        and the prediction (for checks)."""
        import torch

        bag = self.load_bag(run, sid) if bag is None else bag
        x = read_features(bag.get(run.mag))
        key = (run.name, fold)
        if key not in self._models:
            self._models[key] = fold_model(run, fold, x.shape[1])
        net, task, norm = self._models[key]
        if norm is not None:  # the head was trained on fold-standardised features (mil.cv)
            x = (x - norm[0]) / norm[1]
        with torch.inference_mode():
            out = net(features_tensor(x)[None], None)
        return {"attention": out["attention"][0].float().numpy().astype(np.float64),
                "pred": task.predict(out["logits"].float())[0]}

    # ---------------------------------------------------------------------------------------- summaries
    def slide_rows(self) -> list[dict]:
        """One record per slide for the index: labels, and per run fold / prediction / correct (built once)."""
        return list(self._slide_records().values())

    def slide_row(self, sid: str) -> dict:
        """The :meth:`slide_rows` record of one slide ({} for an unknown slide)."""
        return self._slide_records().get(sid, {})

    def _slide_records(self) -> dict[str, dict]:
        with self._lock:
            if self._rows is None:
                self._rows = {sid: self._slide_record(sid) for sid in self.slide_ids}
            return self._rows

    def _slide_record(self, sid: str) -> dict:
        lab = self.labels.loc[sid] if sid in self.labels.index else None
        rec: dict[str, Any] = {"slide": sid, "patient": "", "labels": {}, "runs": {}}
        for r in self.runs:
            if sid not in r.slides:
                continue
            p = r.by_slide.loc[sid]
            rec["patient"] = str(p.get("patient", ""))
            rec["runs"][r.name] = _pred_record(r, p)
        if lab is not None:
            rec["patient"] = str(lab.get("patient", rec["patient"]))
            for c in self.labels.columns:
                if c not in ("patient", "path") and pd.notna(lab[c]):
                    v = lab[c]
                    rec["labels"][c] = v.item() if hasattr(v, "item") else v
        return rec

    def tables(self) -> list[Path]:
        """Comparison tables and plots (compare.md/png, summary.md, roc/km plots) under the run folder."""
        out = []
        for name in ("compare.md", "compare.png", "summary.md", "roc.png", "km.png"):
            out += sorted(p for p in self.root.rglob(name) if not SKIP_DIRS & set(p.parts))
        return sorted(out, key=lambda p: (len(p.relative_to(self.root).parts), str(p)))


def _pred_record(r: Run, p: pd.Series) -> dict:
    rec: dict[str, Any] = {"fold": int(p["fold"])}
    if r.survival:
        rec.update(risk=float(p["risk"]), time=float(p.get("time", np.nan)), event=int(p.get("event", 0)))
        return rec
    k = int(p["pred"])
    classes = r.classes
    rec.update(pred=classes[k] if k < len(classes) else str(k), label=str(p["label"]),
               prob=float(p[f"prob_{k}"]), correct=bool(int(p["y"]) == k),
               p_pos=float(p[f"prob_{r.n_classes - 1}"]))
    return rec


@dataclass
class Generated:
    """One ``zoomfeat generate`` output folder; ``region`` = the real region its SSL grid came from, if known."""

    path: Path
    meta: dict
    images: list[Path] = field(default_factory=list)
    region: dict | None = None


def find_generated(generated: str | os.PathLike | None, root: Path) -> list[Generated]:
    """``generation.json`` folders: under ``generated``, or by default up to three levels under the run folder and
    two levels under a ``generated/`` folder next to it or next to its parent (the demo's layout)."""
    if generated:
        bases = [(Path(generated), 3)]
    else:
        bases = [(root, 3), (root.parent / "generated", 2), (root.parent.parent / "generated", 2)]
    seen, out = set(), []
    for base, depth in bases:
        if not base.is_dir():
            continue
        for pattern in ["/".join(["*"] * d + ["generation.json"]) for d in range(depth + 1)]:
            for g in sorted(base.glob(pattern)):
                if g.resolve() in seen or SKIP_DIRS & set(g.parts) or inside(base, g) is None:
                    continue
                seen.add(g.resolve())
                gen = _generated(g, root)
                if gen is not None:
                    out.append(gen)
    return out


def _generated(g: Path, root: Path) -> Generated | None:
    """One generation folder; None (with a warning naming the file) when its ``generation.json`` is not a JSON
    object: a run folder received from someone else must not stop the viewer with one bad file."""
    try:
        meta = json.loads(g.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"{g}: ignored, not readable JSON ({type(exc).__name__}: {exc})", stacklevel=2)
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("files", []), list) \
            or not isinstance(meta.get("ssl"), (str, type(None))):
        warnings.warn(f"{g}: ignored, not a generation record (a JSON object with a 'files' list)", stacklevel=2)
        return None
    # only files that resolve inside the generation folder: `"files": ["../../etc/passwd"]` or a symlink out of it
    # names a file the viewer must never serve or export
    imgs = [g.parent / f for f in meta.get("files", []) if isinstance(f, str)
            and inside(g.parent, g.parent / f) is not None and (g.parent / f).is_file()]
    ssl = resolve_path(meta.get("ssl"), [g.parent, root]) if meta.get("ssl") else None
    side = ssl.with_suffix(".region.json") if ssl is not None else None
    region = _region_record(side) if side is not None and side.suffix == ".json" and side.is_file() else None
    return Generated(g.parent, meta, imgs, region)


def _region_record(side: Path) -> dict | None:
    """The ``.region.json`` sidecar of an SSL grid (it may lie anywhere the generation named): only its slide id and
    three numbers are kept, so no other content of whatever file it names reaches a page."""
    try:
        rec = json.loads(side.read_text())
        out = {"slide": str(rec["slide"]), **{k: float(rec[k]) for k in ("x", "y", "size_l0")}}
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in out.items()}
