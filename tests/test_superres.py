"""Super-resolution by condition inversion (zoomfeat.generate.superres) on the tiny fixture model and a real H&E tile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zoomfeat.generate.large import LargeImageConfig, constrained_sample, constraint_error
from zoomfeat.generate.superres import (
    SuperResConfig,
    _objective,
    invert_condition,
    prepare_image,
    side_by_side,
    sr_metrics,
    super_resolve,
)




@pytest.fixture(scope="module")
def hr(slides_dir) -> np.ndarray:
    return np.asarray(Image.open(slides_dir / "he_tile_1000px.png").convert("RGB"))


@pytest.fixture(scope="module")
def lr(hr) -> np.ndarray:
    return np.asarray(Image.fromarray(hr).resize((250, 250), Image.BICUBIC))  # 4× downsampled


def test_prepare_image(lr):
    x = prepare_image(lr, 64)
    assert x.shape == (1, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="square"):
        prepare_image(lr[:, :200], 64)


def test_superres_on_he_tile(model, hr, lr):
    cfg = SuperResConfig(scale=4, iters=6, sampling=LargeImageConfig(
        t0=1000, stride=500, n_steps=1, decode_stride=model.latent_size // 2, progress=False))
    res = super_resolve(model, lr, cfg, seed=0, progress=False)
    s = model.image_size
    assert res.sr.shape == (4 * s, 4 * s, 3) and res.sr.dtype == np.uint8
    assert res.lr.shape == (s, s, 3)
    inv = res.inversion
    assert inv.features.shape == (model.ssl_dim, 4, 4)
    assert len(inv.losses) == 6 and np.isfinite(inv.losses).all() and np.isfinite(inv.denoise_losses).all()
    assert np.isfinite(inv.probe_before) and inv.probe_after < inv.probe_before  # objective decreased
    assert np.isfinite(res.constraint_error)
    m = sr_metrics(res.sr, hr)  # reference resized to the SR size
    assert np.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1
    assert side_by_side(res.lr, res.sr).shape == (4 * s, 8 * s + 8, 3)


def test_inversion_gradients_reach_the_tokens_and_are_deterministic(model, lr):
    x = prepare_image(lr, model.image_size)
    with torch.no_grad():
        z = model.encode(x).float()
    feats = torch.randn(model.ssl_dim, 2, 2, requires_grad=True)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    _objective(model, z, feats, 1, 499, eps, official=False).backward()  # denoising term alone
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    cfg = SuperResConfig(scale=2, iters=3, probe_points=2)
    a = invert_condition(model, x, 2, cfg, torch.Generator().manual_seed(5))
    b = invert_condition(model, x, 2, cfg, torch.Generator().manual_seed(5))
    c = invert_condition(model, x, 2, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a.features, b.features) and np.array_equal(a.losses, b.losses)
    assert not torch.equal(a.features, c.features)


def test_lr_constraint_is_enforced(model, invertible_first_stage, lr):
    """With an invertible first stage (the FD premise, see tests/conftest.py), the SR patches match the LR tiles."""
    guide = prepare_image(lr, model.image_size)
    with torch.no_grad():
        ctx = model.condition(torch.randn(4, model.ssl_dim, 1, 1, generator=torch.Generator().manual_seed(2)), 0)
    errs = {}
    for mode in ("none", "fd"):
        cfg = LargeImageConfig(guidance=mode, t0=200, stride=50, n_steps=4, progress=False)
        patches, none_guide = constrained_sample(model, ctx, 2, cfg, torch.Generator().manual_seed(0), guide_image=guide)
        assert none_guide is None
        errs[mode] = constraint_error(model, patches, guide, 2)
    assert errs["none"] / errs["fd"] >= 2.0, errs


def test_cli_superres(tmp_path, micro_ldm_dir, slides_dir, lr):
    from zoomfeat.cli import main

    lr_path = tmp_path / "lr.png"
    Image.fromarray(lr).save(lr_path)
    out = tmp_path / "sr"
    rc = main(["superres", "--model", str(micro_ldm_dir / "weights.ckpt"), "--image", str(lr_path), "--out", str(out),
               "--reference", str(slides_dir / "he_tile_1000px.png"), "--scale", "2", "--iters", "3",
               "--stride", "500", "--n-steps", "1", "--decode-stride", "16", "--device", "cpu"])
    assert rc == 0
    assert Image.open(out / "sr.png").size == (128, 128)
    assert Image.open(out / "lr_sr.png").size == (2 * 128 + 8, 128)
    assert (out / "inversion_loss.png").is_file()
    rec = json.loads((out / "superres.json").read_text())
    assert np.isfinite(rec["psnr"]) and np.isfinite(rec["ssim"])
    assert main(["superres", "--model", str(micro_ldm_dir / "weights.ckpt"), "--image", str(tmp_path / "missing.png"),
                 "--out", str(out)]) == 2
