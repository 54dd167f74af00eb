"""Synthetic bags with known answers, for tests, benchmarks and the demo (no slides needed).

* :func:`concept_bags`: the bag label is the presence of a rare instance concept A (1–3 instances); a decoy
  concept B appears at a frequency that is uninformative (``decoy="random"``) or, to tempt a frequency-only
  shortcut, correlated with the label (``decoy="label"``) or anti-correlated (``decoy="anti"``).
* :func:`survival_bags`: each bag's hazard is exp(beta × fraction of risk-concept instances); times are
  exponential with random censoring, so the true risk ordering is known.
* :func:`write_bags`: the same arrays as HDF5 bags through ``zoomfeat.bags.write_bag`` (with a 5x level and
  ``parent_index``) plus a labels CSV, i.e. what ``zoomfeat extract`` would leave for a cohort.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from zoomfeat.bags import write_bag


def _directions(dim: int, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q[:, :k].T  # k orthonormal directions


def concept_bags(n_bags: int = 200, dim: int = 16, size: tuple[int, int] = (20, 80), decoy: str = "random",
                 seed: int = 0, strength: float = 4.0, n_concept: tuple[int, int] = (1, 3),
                 directions_seed: int = 12345) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags (N_i × dim float32) and binary labels; label 1 ⇔ the bag holds concept-A instances.

    Concept and decoy directions depend only on ``directions_seed``, so a train and a test cohort drawn
    with different ``seed`` share them.
    """
    rng = np.random.default_rng(seed)
    a, b, _ = _directions(dim, np.random.default_rng(directions_seed))
    labels = np.arange(n_bags) % 2
    rng.shuffle(labels)
    bags = []
    for y in labels:
        n = int(rng.integers(size[0], size[1] + 1))
        x = rng.normal(size=(n, dim))
        if decoy == "random":
            frac = rng.uniform(0.0, 0.5)
        elif decoy in ("label", "anti"):
            hi = (y == 1) if decoy == "label" else (y == 0)
            frac = rng.uniform(0.3, 0.5) if hi else rng.uniform(0.0, 0.15)
        else:
            raise ValueError("decoy must be random, label or anti")
        n_b = int(round(frac * n))
        rows = rng.permutation(n)
        x[rows[:n_b]] += strength * b
        if y == 1:
            k = int(rng.integers(n_concept[0], n_concept[1] + 1))
            x[rows[n_b : n_b + k]] += strength * a
        bags.append(x.astype(np.float32))
    return bags, labels.astype(int)


def survival_bags(n_bags: int = 120, dim: int = 16, size: tuple[int, int] = (20, 60), beta: float = 12.0,
                  seed: int = 0, censor_rate: float = 0.3) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Bags, (time, event) pairs and the true risk: hazard = exp(beta · fraction of risk-concept instances)."""
    rng = np.random.default_rng(seed)
    r, _, _ = _directions(dim, np.random.default_rng(54321))
    bags, risk = [], []
    for _ in range(n_bags):
        n = int(rng.integers(size[0], size[1] + 1))
        frac = rng.uniform(0.0, 0.5)
        x = rng.normal(size=(n, dim))
        x[rng.permutation(n)[: int(round(frac * n))]] += 3.0 * r
        bags.append(x.astype(np.float32))
        risk.append(beta * frac)
    risk = np.asarray(risk)
    t_event = rng.exponential(1.0 / np.exp(risk - risk.mean()))
    t_cens = rng.exponential(np.quantile(t_event, 0.5) / max(censor_rate, 1e-3), size=n_bags)
    time = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(int)
    return bags, np.stack([time, event], axis=1), risk


def write_bags(out_dir: str | os.PathLike, n_slides: int = 24, dim: int = 8, seed: int = 0,
               slides_per_patient: int = 2, informative: bool = True, encoder: str = "synthetic",
               n_subtypes: int = 3) -> tuple[Path, Path]:
    """Write a small cohort of HDF5 bags (20x + 5x + parent_index) and its labels CSV.

    Columns: slide, patient, subtype, hrd, time, event (same as ``zoomfeat.slides.synthetic.make_cohort``).
    ``hrd`` is the presence of concept A, ``subtype`` the dominant of three concepts, survival follows the
    risk concept; with ``informative=False`` the features are pure noise (a baseline encoder).
    Returns (bag folder, labels CSV).
    """
    rng = np.random.default_rng(seed)
    dirs = _directions(dim, np.random.default_rng(777), k=min(dim, 5))
    feat_rng = np.random.default_rng(seed + (0 if informative else 99))
    out = Path(out_dir)
    bag_dir = out / f"features_{encoder}"
    rows = []
    n_pat = int(np.ceil(n_slides / slides_per_patient))
    pat_hrd = np.arange(n_pat) % 2
    rng.shuffle(pat_hrd)
    pat_sub = rng.permutation(np.arange(n_pat) % n_subtypes)
    pat_risk = rng.uniform(0, 1, n_pat)
    for i in range(n_slides):
        p = i // slides_per_patient
        slide = f"slide_{i:03d}"
        side = int(feat_rng.integers(5, 9))
        gx, gy = np.meshgrid(np.arange(side), np.arange(side))
        coords = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64) * 256
        n = len(coords)
        x = feat_rng.normal(size=(n, dim))
        if informative:
            if pat_hrd[p]:
                x[feat_rng.permutation(n)[:2]] += 4.0 * dirs[0]
            k_sub = feat_rng.permutation(n)[: n // 3]
            x[k_sub] += 2.5 * dirs[1 + pat_sub[p] % 3] if dim >= 4 else 0
            x[feat_rng.permutation(n)[: int(pat_risk[p] * n / 2)]] += 2.0 * dirs[-1]
        coords_5x = np.unique((coords // 1024) * 1024, axis=0)
        parent = np.array([np.flatnonzero((coords_5x == (c // 1024) * 1024).all(1))[0] for c in coords])
        f5 = np.stack([x[parent == j].mean(0) for j in range(len(coords_5x))])
        write_bag(bag_dir / f"{slide}.h5", x.astype(np.float32), coords,
                  attrs={"encoder": encoder, "patch_size_level0": 256}, features_5x=f5.astype(np.float32),
                  coords_5x=coords_5x, parent_index=parent, coords_attrs={"patch_size_level0": 256})
        rows.append((slide, f"patient_{p:03d}", ["luminal", "basal", "her2"][pat_sub[p] % 3], int(pat_hrd[p]),
                     pat_risk[p]))
    df = pd.DataFrame(rows, columns=["slide", "patient", "subtype", "hrd", "risk"])
    pr = df.groupby("patient")["risk"].first()
    t_event = pd.Series(rng.exponential(1.0 / np.exp(3.0 * (pr - pr.mean()))), index=pr.index)
    t_cens = pd.Series(rng.exponential(2.0 * t_event.median(), len(pr)), index=pr.index)
    df["time"] = df["patient"].map(np.minimum(t_event, t_cens)).round(4)
    df["event"] = df["patient"].map((t_event <= t_cens).astype(int))
    labels = out / "labels.csv"
    df.drop(columns="risk").to_csv(labels, index=False)
    return bag_dir, labels
