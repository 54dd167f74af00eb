"""Mixed precision without a GPU: CPU autocast (bf16) runs the same dtype logic as CUDA autocast, so every stage is
run here in bf16 and compared with fp32 — extraction (zoomldm, uni architecture, tiny-vit), training steps, patch
and large-image generation, a MIL fold. Each comparison also checks bf16 really ran (outputs not bit-identical)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import MICRO_LDM
from tests.test_train_dataset import tiny_dataset  # noqa: F401 (fixture)
from zoomfeat.bags import bag_path, load_bag
from zoomfeat.cli import main
from zoomfeat.precision import autocast, autocast_active, effective_precision, fp32, normalize_precision

CKPT = MICRO_LDM / "weights.ckpt"


def _rowcos(a, b) -> np.ndarray:
    return F.cosine_similarity(torch.as_tensor(a).double(), torch.as_tensor(b).double(), dim=1).numpy()


def test_names_contexts_and_the_fp32_island():
    assert [normalize_precision(p) for p in ("no", "bf16-mixed", "half", "FP32", None)] == \
        ["fp32", "bf16", "fp16", "fp32", "fp32"]
    with pytest.raises(ValueError, match="precision must be one of"):
        normalize_precision("int8")
    assert effective_precision("cpu", "fp16") == "fp32" and effective_precision("cuda", "fp16") == "fp16"
    lin = torch.nn.Linear(8, 8)
    with autocast("cpu", "bf16"):
        assert autocast_active("cpu") and lin(torch.randn(2, 8)).dtype == torch.bfloat16
        with fp32("cpu"):
            assert not autocast_active("cpu") and lin(torch.randn(2, 8)).dtype == torch.float32
    with autocast("cpu", "fp16"):  # fp16 on the CPU runs in fp32
        assert lin(torch.randn(2, 8)).dtype == torch.float32


def test_vq_stays_fp32_while_the_unet_autocasts(model):
    """The official split: under bf16 autocast the VQ encode/decode are bit-identical to fp32, the UNet is bf16."""
    x = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    z = model.encode(x)
    ctx = model.null_context(2)
    with torch.no_grad(), autocast("cpu", "bf16"):
        zb, xb = model.encode(x), model.decode(z)
        eps = model.predict_eps(z, torch.tensor([10, 500]), ctx)
    assert zb.dtype == torch.float32 and torch.equal(zb, z)
    assert torch.equal(xb, model.decode(z))
    assert eps.dtype == torch.bfloat16


def _extract(slide, out, precision, *args):
    rc = main(["extract", str(slide), "--out", str(out), "--workers", "0", "--batch-size", "8", "--no-progress",
               "--threads", "1", "--precision", precision, *args])
    assert rc == 0


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from zoomfeat.slides.synthetic import make_slide

    p = tmp_path_factory.mktemp("prec") / "syn.tiff"
    make_slide(p, size_20x=(1024, 768), seed=1, subtype=1)
    return p


@pytest.mark.parametrize("encoder", ["zoomldm", "tiny-vit"])
def test_extract_bf16_matches_fp32(slide, tmp_path, encoder):
    """Whole `zoomfeat extract` (20x + 5x, zoomldm conditioned on tiny-vit SSL grids) at bf16 vs fp32."""
    args = ["--encoder", encoder] + (["--weights", str(CKPT), "--ssl-encoder", "tiny-vit"] if encoder == "zoomldm"
                                     else [])
    bags = {}
    for p in ("fp32", "bf16"):
        _extract(slide, tmp_path / p, p, *args)
        bags[p] = load_bag(bag_path(tmp_path / p, encoder, "syn"))
    a, b = bags["fp32"], bags["bf16"]
    assert b.attrs["precision"] == "bf16" and b.attrs["precision_effective"] == "bf16"
    assert a.attrs["precision_effective"] == "fp32"
    for fa, fb in ((a.features, b.features), (a.features_5x, b.features_5x)):
        assert fb.dtype == np.float32 and np.isfinite(fb).all() and len(fa) > 0
        cos = _rowcos(fa, fb)
        assert cos.min() >= 0.99, cos.min()
        assert not np.array_equal(fa, fb)  # bf16 really ran


@pytest.mark.parametrize("name,depth", [("uni", 1), ("phikon", 1),  # the fast default twins: full width, 1 block
                                        pytest.param("uni", None, marks=pytest.mark.slow),
                                        pytest.param("phikon", None, marks=pytest.mark.slow)])
def test_uni_and_phikon_architectures_bf16(name, depth):
    """The real UNI ViT-L/16 and Phikon ViT-B (random init): bf16 autocast puts the matmuls in bf16, features stay
    within cos 0.99 of fp32. The default suite builds them at full width with 1 transformer block (`depth`, the
    builders' reduced variant; the full UNI took about 40 s on CPU, most of it bf16 matmuls); the full-depth models
    run under the `slow` marker."""
    from zoomfeat.encoders import create_encoder

    enc = create_encoder(name, random_init=True, precision="fp32", depth=depth)
    for pname, p in enc.model.named_parameters():  # UNI's LayerScale at init (1e-5) would hide the blocks' error
        if pname.endswith("gamma"):
            p.data.fill_(1.0)
    seen = []
    first_linear = next(m for m in enc.model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    f32 = enc.encode(tiles)
    enc.precision = "bf16"
    fbf = enc.encode(tiles)
    assert seen == [torch.float32, torch.bfloat16] and fbf.dtype == torch.float32
    cos = _rowcos(f32, fbf)
    assert cos.min() >= 0.99 and cos.min() < 1 - 1e-6  # UNI measured 0.99996: bf16 error visible, within bound


def test_training_steps_bf16_close_to_fp32(tiny_dataset, tmp_path):
    """One step of the tiny config in fp32 (API) and bf16 (`zoomfeat train --precision bf16`, accelerate's CPU
    autocast): same batch, losses close (was four steps, then two; the warm-up's first step has LR 0, so a second
    step only repeated the forward comparison on another batch of the same weights)."""
    from tests.conftest import ROOT
    from tests.test_train_dataset import tiny_train_cfg
    from zoomfeat.config import load_yaml
    from zoomfeat.train.loop import train

    train(tiny_train_cfg(tiny_dataset, checkpoint_every=0, save_model=False), tmp_path / "fp32", max_steps=1,
          progress=False)
    assert main(["train", "--config", str(ROOT / "configs" / "train" / "tiny.yaml"), "--out", str(tmp_path / "bf16"),
                 "--max-steps", "1", "--no-progress", "--precision", "bf16", "--set", f"dataset.root={tiny_dataset}",
                 "--set", "train.checkpoint_every=0", "--set", "train.save_model=false",
                 "--set", "wandb.enabled=false",
                 # the shared dataset was encoded by the random-init VQ of this config (as tiny_train_cfg pins it)
                 "--set", "model.config=ldm/zoomldm_tiny.yaml", "--set", "first_stage.train=false"]) == 0
    assert load_yaml(tmp_path / "bf16" / "config.yaml")["train"]["mixed_precision"] == "bf16"
    losses = {p: pd.read_csv(tmp_path / p / "metrics.csv")["loss"].to_numpy() for p in ("fp32", "bf16")}
    a, b = losses["fp32"], losses["bf16"]
    assert len(a) == len(b) == 1 and np.isfinite(b).all()
    assert np.abs(a - b).max() <= 0.01 * np.abs(a).max(), (a, b)  # measured 1.6e-4 relative
    assert not np.array_equal(a, b)


def test_patch_generation_bf16(model):
    from zoomfeat.generate.patches import generate_patches

    grid = np.random.default_rng(0).normal(size=(1, model.ssl_dim, 2, 2)).astype(np.float32)
    out = {p: generate_patches(model, grid, "10x", n=2, steps=4, seed=3, precision=p) for p in ("fp32", "bf16")}
    a, b = (out[p].astype(np.float64) for p in ("fp32", "bf16"))
    assert b.shape == a.shape == (2, model.image_size, model.image_size, 3)
    psnr = 10 * np.log10(255.0**2 / ((a - b) ** 2).mean())  # measured 29 dB (images std 77 grey levels)
    assert psnr > 25, psnr
    assert not np.array_equal(a, b)


def test_large_image_bf16(model):
    from zoomfeat.generate.large import LargeImageConfig, sample_large_image

    grid = torch.randn(model.ssl_dim, 2, 2, generator=torch.Generator().manual_seed(0))
    res = {p: sample_large_image(model, grid, LargeImageConfig(t0=1000, stride=500, n_steps=1, batch_size=4,
                                                               progress=False, precision=p), seed=1)
           for p in ("fp32", "bf16")}
    a, b = res["fp32"], res["bf16"]
    assert b.latent.dtype == torch.float32 and torch.isfinite(b.latent).all()
    assert b.image.shape == a.image.shape == (2 * model.image_size,) * 2 + (3,)
    # the random micro UNet is chaotic even over 2 guided steps (stride 500; latents reach |z| ≈ 498): measured cos
    # 0.972 (0.978 over 4 steps at stride 250), constraint errors 0.5 % apart
    assert _rowcos(a.latent.reshape(1, -1), b.latent.reshape(1, -1)).min() > 0.95
    assert abs(a.constraint_error - b.constraint_error) < 0.05 * a.constraint_error
    assert not torch.equal(a.latent, b.latent)


def test_mil_fold_bf16(tmp_path):
    """A 2-fold ABMIL cross-validation in bf16 vs fp32: train/val losses finite and close, predictions close."""
    import mil
    from mil.synthetic import concept_bags

    bags, y = concept_bags(24, 16, size=(10, 30), strength=5.0, seed=1)
    res = {}
    for p in ("fp32", "bf16"):
        df = mil.cross_validate(bags, y, model="abmil", n_folds=2, seed=0, embed_dim=16, attn_dim=8, lr=3e-3,
                                epochs=3, patience=10, min_val_slides=1, progress=False, precision=p, out_dir=tmp_path / p)
        res[p] = (pd.read_csv(tmp_path / p / "fold0" / "history.csv"), df.predictions)
    (ha, pa), (hb, pb) = res["fp32"], res["bf16"]
    for col in ("train_loss", "val_loss"):
        assert np.isfinite(hb[col]).all()
        assert np.abs(ha[col] - hb[col]).max() < 0.01 * ha[col].abs().max(), (ha, hb)  # measured ≤ 3.8e-4
    assert np.abs(pa["prob_1"] - pb["prob_1"]).max() < 0.01  # measured 5e-4
    assert not np.array_equal(ha["train_loss"], hb["train_loss"])


def test_superres_sampling_bf16(model):
    """Super-resolution: fp32 condition inversion, then constrained sampling under bf16 autocast."""
    from PIL import Image

    from tests.conftest import SLIDES
    from zoomfeat.generate.large import LargeImageConfig
    from zoomfeat.generate.superres import SuperResConfig, super_resolve

    lr = np.asarray(Image.open(SLIDES / "he_tile_1000px.png").convert("RGB").resize((128, 128), Image.BICUBIC))
    res = {}
    for p in ("fp32", "bf16"):
        cfg = SuperResConfig(scale=2, iters=1, sampling=LargeImageConfig(t0=1000, stride=500, n_steps=1,
                                                                          progress=False, precision=p))
        res[p] = super_resolve(model, lr, cfg, seed=0, progress=False)
    a, b = res["fp32"], res["bf16"]
    np.testing.assert_array_equal(a.inversion.losses, b.inversion.losses)  # the inversion is fp32 in both
    assert b.sr.shape == a.sr.shape and np.isfinite(b.constraint_error)
    assert not np.array_equal(a.sr, b.sr)  # sampling ran in bf16


def test_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    """--precision auto: bf16 on a CPU with native bf16 (cpuinfo flags), fp32 elsewhere; autocast follows."""
    import zoomfeat.precision as prec

    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(prec, "cpu_native_bf16", lambda native=native: native)
        assert prec.effective_precision("cpu", "auto") == prec.auto_precision("cpu") == want
        prec.check_supported("cpu", "auto")  # never refused
        with prec.autocast("cpu", "auto"):
            assert prec.autocast_active("cpu") == (want == "bf16")
    monkeypatch.undo()
    flags = open("/proc/cpuinfo").read()
    assert prec.cpu_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
