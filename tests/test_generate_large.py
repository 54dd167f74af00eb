"""Joint multi-scale sampling (zoomfeat.generate.large) and the MATLAB-style resizer, on the tiny fixture model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoomfeat.generate.large import (
    LargeImageConfig,
    constrained_sample,
    constraint_error,
    decode_tiled,
    sample_large_image,
    split_tiles,
    stitch,
    window_tokens,
)
from zoomfeat.generate.resize import Resizer, imresize




# ------------------------------------------------------------------------------------------------ resizer
def test_resizer_shapes_and_constants():
    x = torch.rand(2, 3, 64, 48)
    down = Resizer((64, 48), scale=0.25)
    assert down(x).shape == (2, 3, 16, 12)
    assert Resizer(16, scale=4.0)(x[..., :16, :16]).shape == (2, 3, 64, 64)
    assert imresize(x, size=(32, 24)).shape == (2, 3, 32, 24)
    const = torch.full((1, 3, 64, 64), 0.37)
    assert torch.allclose(Resizer(64, scale=1 / 16)(const), torch.full((1, 3, 4, 4), 0.37), atol=1e-6)
    assert torch.allclose(Resizer(4, scale=16.0)(const[..., :4, :4]), torch.full((1, 3, 64, 64), 0.37), atol=1e-6)
    with pytest.raises(ValueError):
        down(torch.rand(1, 3, 32, 32))


def test_resizer_vs_torch_and_pil():
    """Interior = PIL / torch antialiased bicubic (a=-0.5); borders differ (reflect vs renormalised kernel)."""
    from PIL import Image

    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    ours = Resizer(64, scale=0.25)(x)
    ref = F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    diff = (ours - ref).abs()[0, 0]
    assert diff[2:-2, 2:-2].max() < 1e-5  # identical away from the border
    assert diff.max() > 1e-3  # the documented boundary difference exists
    pil = np.asarray(Image.fromarray(x[0, 0].numpy()).resize((16, 16), Image.BICUBIC))
    assert np.abs(pil - ours[0, 0].numpy())[2:-2, 2:-2].max() < 1e-5
    no_aa = F.interpolate(x, size=(16, 16), mode="bicubic", antialias=False, align_corners=False)
    assert (ours - no_aa).abs().mean() > 0.05  # plain torch bicubic aliases
    up = Resizer(16, scale=4.0)(ours)
    ref_up = F.interpolate(ours, size=(64, 64), mode="bicubic", antialias=True, align_corners=False)
    assert (up - ref_up).abs()[0, 0, 8:-8, 8:-8].max() < 1e-5


def test_resizer_matches_official_values():
    """Values computed once by the official ``large_image_gen/resizer.py`` (ZoomLDM faca5d8; not vendored, only its
    outputs: tests/data/resizer_official_reference.npz) on seeded inputs: 64→16, 64→32, 48→16, 16→64, 32→64 and the
    128→32→128 round trip of joint sampling / super-resolution."""
    from tests.conftest import DATA

    ref = np.load(DATA / "resizer_official_reference.npz")
    g = np.random.RandomState(0)  # legacy RandomState: the same stream on every numpy version
    cases = [(64, 0.25), (64, 0.5), (48, 1 / 3), (16, 4.0), (32, 2.0)]
    worst = 0.0
    for n, (size, sc) in enumerate(cases):
        x = torch.from_numpy(g.rand(1, 1, size, size).astype(np.float32) * 2 - 1)
        got = Resizer(size, scale=sc)(x).numpy()
        assert got.shape == ref[f"out_{n}"].shape, (size, sc)
        worst = max(worst, float(np.abs(got - ref[f"out_{n}"]).max()))
    x = torch.from_numpy(g.rand(1, 1, 128, 128).astype(np.float32) * 2 - 1)
    down = Resizer(128, scale=0.25)(x)
    up = Resizer(32, scale=4.0)(down)
    worst = max(worst, float(np.abs(down.numpy() - ref["rt_down"]).max()), float(np.abs(up.numpy() - ref["rt_up"]).max()))
    assert worst < 1e-6, worst


def test_resizer_is_differentiable():
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    Resizer(64, scale=0.5)(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------------ helpers
def test_tiles_stitch_roundtrip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tiles = split_tiles(x, 4)
    assert tiles.shape == (32, 3, 2, 2)
    assert torch.equal(tiles[1], x[0, :, 0:2, 2:4])  # row-major
    assert torch.equal(stitch(tiles, 4), x)


def test_decode_tiled_equals_decoder_where_windows_do_not_overlap(model):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(4, 3, model.latent_size, model.latent_size, generator=g) * 0.3
    with torch.no_grad():
        single = model.decode(lat).float()
    assert torch.allclose(decode_tiled(model, lat[:1]), single[:1], atol=1e-4)  # batch-size rounding only
    blended = decode_tiled(model, stitch(lat, 2), stride=model.latent_size)
    assert blended.shape == (1, 3, 2 * model.image_size, 2 * model.image_size)
    assert torch.allclose(split_tiles(blended, 2), single, atol=1e-4)
    overlapped = decode_tiled(model, stitch(lat, 2))  # default stride latent_size // 4
    assert overlapped.shape == blended.shape and torch.isfinite(overlapped).all()


def test_window_tokens_interpolate_between_grid_tokens():
    grid = torch.randn(8, 2, 2)
    toks = window_tokens(grid, [(0, 0), (16, 0), (0, 16), (8, 0)], 16)
    assert torch.allclose(toks[0], grid[:, 0, 0], atol=1e-6)
    assert torch.allclose(toks[1], grid[:, 1, 0], atol=1e-6)
    assert torch.allclose(toks[2], grid[:, 0, 1], atol=1e-6)
    mid = toks[3]
    assert not torch.allclose(mid, grid[:, 0, 0]) and not torch.allclose(mid, grid[:, 1, 0])


def test_bad_inputs(model):
    cfg = LargeImageConfig(stride=500, n_steps=0, progress=False)
    with pytest.raises(ValueError, match="power of two"):
        sample_large_image(model, torch.randn(model.ssl_dim, 3, 3), cfg)
    with pytest.raises(ValueError, match="levels"):
        sample_large_image(model, torch.randn(model.ssl_dim, 256, 256), cfg)
    with pytest.raises(ValueError, match="expected"):
        sample_large_image(model, torch.randn(7, 2, 2), cfg)
    with pytest.raises(ValueError, match="guidance"):
        LargeImageConfig(guidance="bogus")
    ctx = model.null_context(4)
    with pytest.raises(ValueError, match="exactly one"):
        constrained_sample(model, ctx, 2, cfg, torch.Generator())


# ------------------------------------------------------------------------------------------------ guidance
def _joint(model, mode: str, n_steps: int = 4):
    """Joint 2×2 sampling from t0=200 (a random-weight UNet explodes from pure noise at t=1000)."""
    grid = torch.randn(model.ssl_dim, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ctx = model.condition(grid.flatten(1).T[:, :, None, None], 0)
        ctx_g = model.condition(grid[None], 1)
    cfg = LargeImageConfig(guidance=mode, t0=200, stride=50, n_steps=n_steps, batch_size=2, progress=False)
    patches, guide_lat = constrained_sample(model, ctx, 2, cfg, torch.Generator().manual_seed(0), guide_context=ctx_g)
    with torch.no_grad():
        guide = model.decode(guide_lat).float().clamp(-1, 1)
    return patches, guide


@pytest.mark.parametrize("mode", ["fd", "autograd"])
def test_guidance_enforces_the_low_mag_constraint(model, invertible_first_stage, mode):
    p0, g0 = _joint(model, "none")
    p1, g1 = _joint(model, mode)
    assert torch.equal(g0, g1)  # same seed: the guide chain does not depend on the patches
    err_none = constraint_error(model, p0, g0, 2)
    err = constraint_error(model, p1, g1, 2)
    assert np.isfinite(err) and err_none / err >= 2.0, (mode, err_none, err)


def test_sample_large_image_end_to_end_and_deterministic(model):
    grid = np.random.RandomState(0).randn(model.ssl_dim, 2, 2).astype(np.float32)
    cfg = LargeImageConfig(t0=1000, stride=500, n_steps=1, decode_stride=model.latent_size // 2,
                           refine=True, refine_t0=100, progress=False)
    a = sample_large_image(model, grid, cfg, seed=3)
    s = model.image_size
    assert a.image.shape == (2 * s, 2 * s, 3) and a.image.dtype == np.uint8
    assert a.guide.shape == (s, s, 3) and a.unrefined.shape == a.image.shape
    assert a.mag_index == 1 and a.latent.shape == (1, model.latent_channels, 2 * model.latent_size, 2 * model.latent_size)
    assert np.isfinite(a.constraint_error)
    cfg.refine = False
    b = sample_large_image(model, grid, cfg, seed=3)
    c = sample_large_image(model, grid, cfg, seed=4)
    assert np.array_equal(b.image, a.unrefined)  # same seed, same chains
    assert not np.array_equal(b.image, c.image)


def test_cli_generate_large(tmp_path, micro_ldm_dir):
    from zoomfeat.cli import main

    grid = tmp_path / "grid.npy"
    np.save(grid, np.random.RandomState(0).randn(24, 4).astype(np.float32))  # official [C, n] layout, 2×2
    out = tmp_path / "out"
    ckpt = str(micro_ldm_dir / "weights.ckpt")
    assert main(["generate-large", "--model", ckpt, "--ssl", str(grid), "--size", "1024", "--out", str(out)]) == 2
    rc = main(["generate-large", "--model", ckpt, "--ssl", str(grid), "--size", "128", "--out", str(out),
               "--stride", "500", "--n-steps", "1", "--decode-stride", "16", "--device", "cpu"])
    assert rc == 0
    from PIL import Image

    assert Image.open(out / "large.png").size == (128, 128)
    assert Image.open(out / "guide.png").size == (64, 64)
    assert json.loads((out / "generation.json").read_text())["config"]["official_timesteps"] is False
    off = tmp_path / "official"  # the official loop's t / t-1 convention is one flag away
    assert main(["generate-large", "--model", ckpt, "--ssl", str(grid), "--size", "128", "--out", str(off),
                 "--stride", "500", "--n-steps", "1", "--decode-stride", "16", "--device", "cpu",
                 "--official-timesteps"]) == 0
    assert json.loads((off / "generation.json").read_text())["config"]["official_timesteps"] is True
    assert not np.array_equal(np.asarray(Image.open(off / "large.png")), np.asarray(Image.open(out / "large.png")))


def test_schedule_conventions(model):
    from zoomfeat.generate.large import make_schedule

    ac = model.alphas_cumprod.double()
    ours = make_schedule(model.alphas_cumprod, 1000, 50)
    off = make_schedule(model.alphas_cumprod, 1000, 50, official=True)
    assert len(ours) == len(off) == 20
    assert ours.model_t[0] == 999 and off.model_t[0] == 1000  # official feeds t while ᾱ uses t-1
    assert ours.alpha[0] == off.alpha[0] == pytest.approx(float(ac[999]))
    assert ours.alpha_prev[0] == pytest.approx(float(ac[949]))
    assert ours.alpha_prev[-1] == 1.0 and off.alpha_prev[-1] == pytest.approx(float(ac[0]))
    assert ours.beta[0] == pytest.approx(float(1 - ac[999] / ac[998]))
