"""Issue 25, finding 4: `mil cv` / `compare` check every bag's feature spec against the cohort's majority and refuse
(exit 2, naming the odd bag) — one odd bag sorting first never decides for the others — and the probe cache key
covers every weight that shapes a feature."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from mil.synthetic import write_bags
from zoomfeat.cli import main

TINY = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=2", "hparams.min_epochs=0",
        "hparams.patience=1", "hparams.progress=false", "n_folds=2", "hparams.wandb=false"]


def _cohort(root, odd: tuple[str, ...] = ("slide_000",), n: int = 12):
    """12 same-width bags recorded as tiny-vit seed 0; the ``odd`` ones as tiny-vit ``--seed 1`` (same width)."""
    bag_dir, labels = write_bags(root, n_slides=n, dim=8, seed=0, encoder="tiny-vit")
    for p in sorted(bag_dir.glob("*.h5")):
        cfg = {"name": "tiny-vit", "dim": 8, "arch": "timm VisionTransformer", "depth": 2,
               "seed": 1 if p.stem in odd else 0}
        with h5py.File(p, "r+") as f:
            f.attrs["encoder_config"] = json.dumps(cfg, sort_keys=True)
            f.attrs["dim"] = 8
    return bag_dir, labels


def test_mil_cv_refuses_a_foreign_bag_that_sorts_first(tmp_path, capsys):
    bags, labels = _cohort(tmp_path)
    out = tmp_path / "cv"
    rc = main(["mil", "cv", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(out), f"labels={labels}",
               f"bags={bags}", *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "slide_000" in err and "recipe.seed: cohort 0, bag 1" in err and "1 of 12" in err
    assert not (out / "fold0" / "best.pt").exists()


def test_compare_refuses_a_foreign_bag(tmp_path, capsys):
    bags, labels = _cohort(tmp_path, odd=("slide_007",))
    rc = main(["compare", "--config", "configs/mil/compare.yaml", "--out", str(tmp_path / "cmp"), "--labels",
               str(labels), "--frameworks", "abmil", "--bags", f"tiny={bags}", "--tasks", "hrd", *TINY,
               "n_repeats=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "slide_007" in err and "tiny" in err


def test_no_majority_is_refused_and_one_spec_passes(tmp_path):
    from mil.spec import SpecMismatchError, check_cohort_specs
    from zoomfeat.bags import list_bags

    bags, _ = _cohort(tmp_path, odd=tuple(f"slide_{i:03d}" for i in range(6)))
    with pytest.raises(SpecMismatchError, match="no majority"):
        check_cohort_specs(list_bags(bags))
    same, _ = _cohort(tmp_path / "b", odd=())
    assert check_cohort_specs(list_bags(same))["recipe"]["seed"] == 0


def test_first_bag_width_does_not_decide():
    """Peer bags (no spec): the cohort's width is the majority's; the odd bag is the one skipped."""
    from mil.data import build_cohort

    slides = [f"s{i:02d}" for i in range(12)]
    df = pd.DataFrame({"slide": slides, "patient": slides, "hrd": [i % 2 for i in range(12)]})
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(5, 4 if s == "s00" else 8)).astype(np.float32) for s in slides}
    with pytest.warns(UserWarning):
        c = build_cohort(df, feats, "binary", "hrd")
    assert c.dim == 8 and c.slides == slides[1:]
    assert [s for s, _ in c.skipped] == ["s00"] and "the majority" in c.skipped[0][1]


class _Stop(Exception):
    pass


def test_probe_cache_key_covers_ssl_and_baseline_weights(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from tests.conftest import MICRO_LDM
    from zoomfeat import probe
    from zoomfeat.encoders import create_encoder
    from zoomfeat.ldm import ZoomLDM

    weights = MICRO_LDM / "weights.ckpt"
    ssl_dim = ZoomLDM.load(weights, None).ssl_dim
    ssl1 = tmp_path / "ssl_seed1.safetensors"
    sd = create_encoder("tiny-vit", dim=int(ssl_dim), seed=1).model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ssl1))
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.tiff").write_bytes(b"")
    keys = []

    def fake(slides, tiles, cache, ldm, spec, model_sha, *a, **k):
        keys.append(model_sha)
        raise _Stop

    monkeypatch.setattr(probe, "compute_means", fake)
    spec = probe.SweepSpec(blocks=[0], t=[0], conditioning=["uni"], tasks=["hrd"], baselines=[],
                           ssl_encoder="tiny-vit")
    for ssl_weights in (None, ssl1, None):
        with pytest.raises(_Stop):
            probe.sweep(tmp_path / "slides", tmp_path, tmp_path / "l.csv", weights, tmp_path / "out", spec,
                        ssl_weights=ssl_weights, progress=False)
    assert keys[0] != keys[1] and keys[0] == keys[2]  # other SSL weights → other cache; same → same
    # baselines: two encoders differing only in their weights have different identities
    a, b = (probe.encoder_identity(create_encoder("tiny-vit", seed=s)) for s in (0, 1))
    assert a != b and a == probe.encoder_identity(create_encoder("tiny-vit", seed=0))
    del torch
