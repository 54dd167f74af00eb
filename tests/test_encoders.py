"""Encoders: registry and weights checks, tiny ViT, UNI/Phikon strict loading, custom, and the ZoomLDM encoder
against the official fixture (pooled early-exit activations = pooled ``ema_intermediate_*``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import MICRO_LDM
from zoomfeat.encoders import TileContext, create_encoder, load_weights_registry, resolve_weights
from zoomfeat.encoders.base import TileTransform, to_float_images

CKPT = MICRO_LDM / "weights.ckpt"



@pytest.fixture(scope="module")
def ref():
    return dict(np.load(MICRO_LDM / "reference.npz"))


@pytest.fixture(scope="module")
def ldm_enc():
    """Micro ZoomLDM encoder, middle block + two decoder blocks, two timesteps, tiny-vit SSL conditioning."""
    return create_encoder("zoomldm", weights=CKPT, ssl_encoder="tiny-vit", blocks=[0, 2, 4], t=[50, 100])


def _tiles(n: int, seed: int = 0, px: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, px, px, 3), generator=g, dtype=torch.uint8)


def _fast_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill a meta-built model with random values quickly (timm/HF init of ViT-L takes ~40 s on 2 cores)."""
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.parameters()) + list(model.buffers()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


# ---------------------------------------------------------------------------------------------- transforms/registry


def test_transform_accepts_hwc_chw_and_float():
    x = _tiles(2, px=32)
    tf = TileTransform(size=16, mean=(0, 0, 0), std=(1, 1, 1))
    a = tf(x)
    b = tf(x.permute(0, 3, 1, 2).contiguous())
    c = tf(x.permute(0, 3, 1, 2).float() / 255)
    assert a.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert float(to_float_images(x).max()) <= 1.0
    with pytest.raises(ValueError):
        tf(torch.zeros(2, 5, 8, 8))


def test_registry_missing_and_relative(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOOMFEAT_WEIGHTS_REGISTRY", raising=False)
    reg = tmp_path / "weights.yaml"
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "uni.bin").write_bytes(b"x")
    reg.write_text("uni: w/uni.bin\nphikon: null\nzoomldm: /nonexistent/zoomldm\n")
    table = load_weights_registry(reg)
    assert table == {"uni": tmp_path / "w" / "uni.bin", "zoomldm": Path("/nonexistent/zoomldm")}
    assert resolve_weights("uni", registry=reg) == tmp_path / "w" / "uni.bin"
    with pytest.raises(FileNotFoundError, match="no weights for encoder 'phikon'"):
        create_encoder("phikon", registry=reg)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_encoder("zoomldm", registry=reg)
    with pytest.raises(FileNotFoundError, match="registry not found"):
        load_weights_registry(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("resnet-9000")
    # zoomldm with UNI conditioning but no UNI weights: a clear error before the model is loaded
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="no weights for encoder 'uni'.*--ssl-weights"):
        create_encoder("zoomldm", weights=CKPT, registry=empty)


# ---------------------------------------------------------------------------------------------- tiny-vit / custom


def test_tiny_vit_seeded_and_loadable(tmp_path):
    a, b, c = create_encoder("tiny-vit"), create_encoder("tiny-vit"), create_encoder("tiny-vit", seed=1)
    x = _tiles(3)
    fa = a.encode(x)
    assert fa.shape == (3, 48) and fa.dtype == torch.float32
    torch.testing.assert_close(fa, b.encode(x), rtol=0, atol=0)
    assert not torch.allclose(fa, c.encode(x))
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    torch.save(c.model.state_dict(), tmp_path / "tiny.pt")
    d = create_encoder("tiny-vit", weights=tmp_path / "tiny.pt")
    torch.testing.assert_close(d.encode(x), c.encode(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # strict: a 32-d state dict does not fit the 48-d model
        torch.save(create_encoder("tiny-vit", dim=32).model.state_dict(), tmp_path / "t32.pt")
        create_encoder("tiny-vit", weights=tmp_path / "t32.pt")


def test_custom_encoder_infers_dim():
    net = nn.Sequential(nn.Conv2d(3, 7, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = create_encoder("custom", model=net, input_size=32, encoder_name="tinycnn")
    assert enc.dim == 7 and enc.name == "tinycnn"
    assert enc.encode(_tiles(2)).shape == (2, 7)
    with pytest.raises(ValueError):
        create_encoder("custom")


# ---------------------------------------------------------------------------------------------- UNI / Phikon


def test_uni_architecture_on_meta():
    """Fast check of the UNI architecture without materialising its 1.2 GB of weights."""
    from zoomfeat.encoders.uni import build_uni_model

    with torch.device("meta"):
        m = build_uni_model()
    sd = m.state_dict()
    assert "blocks.23.ls2.gamma" in sd and "blocks.24.norm1.weight" not in sd
    assert sd["pos_embed"].shape == (1, 197, 1024) and sd["cls_token"].shape == (1, 1, 1024)
    assert sum(p.numel() for p in m.parameters()) == 303_350_784
    assert m.num_classes == 0 and m.global_pool == "token"


#: blocks of the UNI / Phikon models the strict-loading tests write and load (the full 24 / 12 would only add
#: ~1 GB of weights to write and read: their full-size listing is checked on the meta device above and in
#: tests/test_encoder_parity.py)
STRICT_DEPTH = 2


def test_uni_strict_load_and_shape(tmp_path):
    from zoomfeat.encoders.uni import build_uni_model

    with torch.device("meta"):
        ref_model = build_uni_model(STRICT_DEPTH)
    ref_model = _fast_random(ref_model).eval()
    torch.save(ref_model.state_dict(), tmp_path / "pytorch_model.bin")
    enc = create_encoder("uni", weights=tmp_path, depth=STRICT_DEPTH)  # folder → pytorch_model.bin, strict=True
    assert enc.dim == 1024 and enc.transforms.size == 224 and enc.precision == "fp16"
    # dynamic_img_size lets a small input through: the check is about weights and output shape, not pixels
    enc.transforms = TileTransform(size=32)
    x = _tiles(2, px=32)
    out = enc.encode(x)
    assert out.shape == (2, 1024)
    with torch.inference_mode():
        torch.testing.assert_close(out, ref_model(enc.transforms(x)))
    sd = ref_model.state_dict()
    sd.pop("blocks.0.ls1.gamma")  # LayerScale missing (a ViT-L without init_values) must fail strict loading
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(RuntimeError, match="ls1.gamma"):
        create_encoder("uni", weights=tmp_path / "bad.bin", depth=STRICT_DEPTH)


@pytest.mark.parametrize("form", ["state_dict", "folder"])
def test_phikon_strict_load(tmp_path, form):
    from transformers import ViTModel

    from zoomfeat.encoders.phikon import phikon_config

    with torch.device("meta"):
        m = ViTModel(phikon_config(STRICT_DEPTH), add_pooling_layer=False)
    m = _fast_random(m, seed=3).eval()
    if form == "state_dict":
        w = tmp_path / "phikon.bin"
        torch.save({f"vit.{k}": v for k, v in m.state_dict().items()}, w)  # as saved from a ViTFor* model
    else:
        w = tmp_path / "folder"
        m.save_pretrained(w)
    x = _tiles(2, px=224)
    with torch.inference_mode():
        expect = m(pixel_values=TileTransform(224)(x)).last_hidden_state[:, 0]
    enc = create_encoder("phikon", weights=w, **({"depth": STRICT_DEPTH} if form == "state_dict" else {}))
    assert enc.model.config.num_hidden_layers == STRICT_DEPTH  # a folder's config.json gives the depth
    out = enc.encode(x)
    assert out.shape == (2, 768) and enc.dim == 768
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    if form == "state_dict":
        sd = m.state_dict()
        sd.pop("layernorm.weight")
        torch.save(sd, tmp_path / "bad.bin")
        with pytest.raises(RuntimeError, match="layernorm.weight"):
            create_encoder("phikon", weights=tmp_path / "bad.bin", depth=STRICT_DEPTH)


# ---------------------------------------------------------------------------------------------- ZoomLDM encoder


def test_zoomldm_pooled_features_match_official_intermediates(ldm_enc, ref):
    """Early-exit activations, pooled, equal pooling the official return_intermediates outputs."""
    x_t, t, ctx = (torch.from_numpy(ref[k]) for k in ("x_t", "t", "context_4"))
    got = ldm_enc.pooled_features(x_t, t.long(), ctx)
    want = torch.cat([torch.from_numpy(ref[f"ema_intermediate_{b:02d}"]).mean(dim=(2, 3)) for b in (0, 2, 4)], 1)
    assert got.shape == (2, 32 + 32 + 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_zoomldm_encode_chain_matches_fixture(ldm_enc, ref):
    """image → VQ latent (official latent_prequant) → x_t with the official ᾱ and the per-tile seed → features."""
    img01 = (torch.from_numpy(ref["image"]) + 1) / 2  # [1, 3, 64, 64] in [0, 1]; 64 px = the model's image size
    seed = 1234
    feats = ldm_enc.encode(img01, TileContext("20x", ssl_grid=torch.from_numpy(ref["ssl_raw_1"][:1]), seeds=[seed]))
    assert feats.shape == (1, ldm_enc.dim) and ldm_enc.dim == 2 * 96
    z0 = torch.from_numpy(ref["latent_prequant"])
    eps = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed))[None]
    ac = torch.from_numpy(ref["alphas_cumprod"])
    ctx = ldm_enc.model.condition(torch.from_numpy(ref["ssl_raw_1"][:1]), 0)
    torch.testing.assert_close(ctx, torch.from_numpy(ref["context_1"][:1]), rtol=1e-4, atol=1e-4)
    parts = []
    for tv in (50, 100):
        x_t = ac[tv].sqrt() * z0 + (1 - ac[tv]).sqrt() * eps
        parts.append(ldm_enc.pooled_features(x_t, torch.tensor([tv]), ctx))
    torch.testing.assert_close(feats, torch.cat(parts, 1), rtol=1e-3, atol=1e-3)


def test_zoomldm_seeds_batches_and_options(ldm_enc):
    from zoomfeat.encoders.zoomldm import tile_seeds

    x = _tiles(3, seed=5, px=64)
    ssl = ldm_enc.ssl_encoder.encode(x)[:, :, None, None]
    seeds = tile_seeds("slideA", np.array([[0, 0], [256, 0], [512, 0]]), "20x")
    assert len(set(seeds.tolist())) == 3
    assert (tile_seeds("slideA", np.array([[256, 0]]), "20x") == seeds[1]).all()
    full = ldm_enc.encode(x, TileContext("20x", ssl_grid=ssl, seeds=seeds))
    # same tiles in another batch → same features
    part = ldm_enc.encode(x[1:], TileContext("20x", ssl_grid=ssl[1:], seeds=seeds[1:]))
    torch.testing.assert_close(full[1:], part, rtol=1e-3, atol=1e-3)
    other = ldm_enc.encode(x, TileContext("20x", ssl_grid=ssl, seeds=seeds + 1))
    assert not torch.allclose(full, other)
    # 5x: 4×4 grid conditioning at mag 5x differs from the 20x conditioning of the same pixels
    g5 = ssl.repeat(1, 1, 4, 4)
    assert not torch.allclose(ldm_enc.encode(x, TileContext("5x", ssl_grid=g5, seeds=seeds)), full)
    # t-major concatenation: the first half is the t=50 feature alone
    only50 = create_encoder("zoomldm", weights=CKPT, ssl_encoder="tiny-vit", blocks=[0, 2, 4], t=[50])
    torch.testing.assert_close(only50.encode(x, TileContext("20x", ssl_grid=ssl, seeds=seeds)), full[:, :96],
                               rtol=1e-3, atol=1e-3)
    none = create_encoder("zoomldm", weights=CKPT, conditioning="none", blocks=[0])
    assert none.dim == 32 and none.ssl_encoder is None
    assert not torch.allclose(none.encode(x, TileContext("20x", seeds=seeds)), full[:, :32])


def test_zoomldm_bad_options():
    with pytest.raises(ValueError, match="blocks"):
        create_encoder("zoomldm", weights=CKPT, conditioning="none", blocks=[5])
    with pytest.raises(ValueError, match="ssl dim"):
        create_encoder("zoomldm", weights=CKPT, ssl_encoder="tiny-vit", ssl_kwargs={"dim": 32})
    with pytest.raises(ValueError, match="timesteps"):
        create_encoder("zoomldm", weights=CKPT, conditioning="none", t=[1000])
    with pytest.raises(FileNotFoundError):
        create_encoder("zoomldm", weights=MICRO_LDM / "missing.ckpt", conditioning="none")
