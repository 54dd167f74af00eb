"""Patch generation: `zoomfeat generate` on the tiny fixture model, SSL grid files, image grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import MICRO_LDM, SLIDES



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from zoomfeat.ldm import ZoomLDM

    model = ZoomLDM.load(MICRO_LDM / "weights.ckpt", MICRO_LDM / "config.yaml")
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "tiny")


def test_generate_cli_writes_patches_and_grid(tmp_path, model_dir):
    from zoomfeat.cli import main

    grid = np.random.RandomState(0).randn(24, 16).astype(np.float32)  # official BRCA layout [C, n], 4x4 (micro: 24 channels)
    np.save(tmp_path / "grid.npy", grid)
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(model_dir), "--ssl", str(tmp_path / "grid.npy"), "--mag", "5x",
               "--n", "3", "--steps", "4", "--out", str(out), "--seed", "1", "--batch-size", "2"])
    assert rc == 0
    files = sorted(p.name for p in out.glob("sample_*.png"))
    assert files == ["sample_000.png", "sample_001.png", "sample_002.png"]
    ims = [np.asarray(Image.open(out / f)) for f in files]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in ims)
    assert ims[0].std() > 0 and not np.array_equal(ims[0], ims[1])  # different noise per sample
    g = np.asarray(Image.open(out / "grid.png"))
    assert g.shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)
    meta = json.loads((out / "generation.json").read_text())
    assert meta["mag"] == "5x" and meta["mag_index"] == 2 and meta["n"] == 3

    # same seed → same patches, also when --model is the official .ckpt
    out2 = tmp_path / "gen2"
    rc = main(["generate", "--model", str(MICRO_LDM / "weights.ckpt"), "--official-config", str(MICRO_LDM / "config.yaml"),
               "--ssl", str(tmp_path / "grid.npy"), "--mag", "2", "--n", "3", "--steps", "4", "--out", str(out2),
               "--seed", "1", "--batch-size", "2"])  # same batching: bitwise-equal uint8 needs the same kernels
    assert rc == 0
    assert np.array_equal(np.asarray(Image.open(out2 / "sample_002.png")), ims[2])


def test_generate_cli_bad_grid_is_clear_error(tmp_path, model_dir, capsys):
    from zoomfeat.cli import main

    np.save(tmp_path / "bad.npy", np.zeros((32, 2, 2), np.float32))
    rc = main(["generate", "--model", str(model_dir), "--ssl", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "32 channels, the model expects 24" in capsys.readouterr().err
    np.save(tmp_path / "bad3.npy", np.zeros((24, 9), np.float32))  # 3x3
    rc = main(["generate", "--model", str(model_dir), "--ssl", str(tmp_path / "bad3.npy"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "3x3 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_load_ssl_grid_layouts(tmp_path):
    from zoomfeat.generate.patches import load_ssl_grid

    rng = np.random.RandomState(0)
    g = rng.randn(48, 2, 2).astype(np.float32)
    for name, arr in {"chw": g, "cn": g.reshape(48, 4), "nc": g.reshape(48, 4).T, "bchw": g[None]}.items():
        np.save(tmp_path / f"{name}.npy", arr)
        assert np.array_equal(load_ssl_grid(tmp_path / f"{name}.npy", 48), g[None]), name
    np.save(tmp_path / "one.npy", g[:, 0, 0])
    assert load_ssl_grid(tmp_path / "one.npy", 48).shape == (1, 48, 1, 1)
    torch.save(torch.from_numpy(g), tmp_path / "g.pt")
    assert np.array_equal(load_ssl_grid(tmp_path / "g.pt", 48), g[None])
    np.save(tmp_path / "nan.npy", np.full((48, 1, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_ssl_grid(tmp_path / "nan.npy", 48)


def test_generate_patches_api_and_image_conditioning(model_dir):
    """The Python API, conditioned on a real H&E tile through an encoder."""
    from zoomfeat.generate.patches import generate_patches, ssl_grid_from_image
    from zoomfeat.ldm import ZoomLDM

    model = ZoomLDM.from_pretrained(model_dir)

    class FakeEncoder:  # stands in for UNI: a fixed random projection of mean colour statistics
        dim = 24

        def __init__(self):
            self.proj = torch.randn(6, 24, generator=torch.Generator().manual_seed(0))

        def encode(self, tiles):
            x = tiles.float() / 255.0
            stats = torch.cat([x.mean(dim=(1, 2)), x.std(dim=(1, 2))], dim=1)
            return stats @ self.proj

    he = np.asarray(Image.open(SLIDES / "he_tile_1000px.png").convert("RGB"))
    grid = ssl_grid_from_image(he, FakeEncoder(), side=4)
    assert grid.shape == (1, 24, 4, 4)
    ims = generate_patches(model, grid, "5x", n=2, steps=3, scheduler="plms", seed=0)
    assert ims.shape == (2, 64, 64, 3) and ims.dtype == np.uint8


def test_save_image_grid(tmp_path):
    from zoomfeat.generate.patches import save_image_grid

    ims = np.stack([np.full((8, 10, 3), i * 40, np.uint8) for i in range(5)])
    p = save_image_grid(ims, tmp_path / "g.png", nrow=3, padding=1)
    g = np.asarray(Image.open(p))
    assert g.shape == (2 * 8 + 3, 3 * 10 + 4, 3)
    assert (g[1:9, 1:11] == 0).all() and (g[10:18, 12:22] == 160).all()
    t = torch.zeros(2, 3, 4, 4)  # [-1, 1] tensors are accepted too (0 → mid grey)
    g2 = np.asarray(Image.open(save_image_grid(t, tmp_path / "t.png", nrow=2, padding=0)))
    assert g2.shape == (4, 8, 3) and (g2 == 128).all()
    with pytest.raises(ValueError):
        save_image_grid([], tmp_path / "e.png")


def test_load_ssl_grid_arrays_tensors_and_channels_last():
    """The one SSL-grid reader also takes arrays and tensors (what generate-large and the API pass)."""
    from zoomfeat.generate.patches import load_ssl_grid

    g = np.random.RandomState(1).randn(48, 2, 2).astype(np.float32)
    for name, src in {"tensor": torch.from_numpy(g), "hwc": g.transpose(1, 2, 0), "cn": g.reshape(48, 4),
                      "nc_tensor": torch.from_numpy(g.reshape(48, 4).T.copy())}.items():
        out = load_ssl_grid(src, 48)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, name
        assert np.array_equal(out.numpy(), g[None]), name
    with pytest.raises(ValueError, match="not square"):
        load_ssl_grid(np.zeros((1, 48, 2, 4), np.float32), 48)
    with pytest.raises(ValueError, match="7 channels, the model expects 48"):
        load_ssl_grid(np.zeros((7, 2, 2), np.float32), 48)


def test_guided_eps_is_standard_cfg(model):
    """ZoomLDM.guided_eps (the CFG of every sampler) is ε_u + s(ε_c − ε_u) with a zero null context, in fp32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.latent_channels, model.latent_size, model.latent_size, generator=g)
    ctx = model.condition(torch.randn(2, model.ssl_dim, 2, 2, generator=g), 1)
    with torch.no_grad():
        e_c = model.predict_eps(x, 500.0, ctx)
        e_u = model.predict_eps(x, 500.0, torch.zeros_like(ctx))
        guided = model.guided_eps(x, 500.0, ctx, 3.0)
        plain = model.guided_eps(x, 500.0, ctx, 1.0)
    assert guided.dtype == torch.float32 and not torch.allclose(e_c, e_u)
    assert torch.allclose(guided, e_u + 3.0 * (e_c - e_u), atol=1e-5)
    assert torch.equal(plain, e_c)
