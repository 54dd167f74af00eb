"""MIL heads: masks, attention outputs, TransMIL's official padding, two-branch fusion, a 50k-instance bag."""

from __future__ import annotations

import pytest
import torch

from mil.models import ABMIL, TransMIL, TwoBranchMIL, build_model



def _batch(b=3, n=40, d=12, lengths=(40, 25, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, k in enumerate(lengths):
        mask[i, :k] = True
    return x, mask


def test_abmil_padding_is_invisible_and_attention_normalised():
    torch.manual_seed(0)
    m = ABMIL(12, 3, embed_dim=16, attn_dim=8).eval()
    x, mask = _batch()
    out = m(x, mask)
    assert out["logits"].shape == (3, 3) and out["attention"].shape == (3, 40)
    assert torch.allclose(out["attention"].sum(1), torch.ones(3), atol=1e-5)
    assert (out["attention"][~mask] == 0).all()
    for i, k in enumerate((40, 25, 6)):
        solo = m(x[i : i + 1, :k])
        assert torch.allclose(solo["logits"][0], out["logits"][i], atol=1e-5)
    x2 = x.clone()
    x2[~mask] = 1e3
    assert torch.allclose(m(x2, mask)["logits"], out["logits"], atol=1e-5)


def test_abmil_defaults_are_clam_sizes():
    m = ABMIL(1024, 2)
    assert m.fc[0].out_features == 512 and m.attention.a[0].out_features == 256
    assert m.fc[2].p == 0.25 and m.attention.b is not None  # gated
    narrow = ABMIL(48, 3)  # issue 23.4: never wider than its features (floor 64); explicit sizes still win
    assert narrow.fc[0].out_features == 64 and narrow.attention.a[0].out_features == 32
    assert narrow.sizes == {"embed_dim": 64, "attn_dim": 32} and ABMIL(48, 3, embed_dim=512).sizes["attn_dim"] == 256
    deep = ABMIL(64, 2, embed_dim=32, n_fc=3)
    assert sum(isinstance(l, torch.nn.Linear) for l in deep.fc) == 3


def test_transmil_mask_aware_ignores_padding_values():
    torch.manual_seed(0)
    m = TransMIL(12, 2, embed_dim=32, heads=2, num_landmarks=8, mask_aware=True).eval()
    x, mask = _batch()
    out = m(x, mask)
    x2 = x.clone()
    x2[~mask] = 50.0
    out2 = m(x2, mask)
    assert torch.allclose(out["logits"], out2["logits"], atol=1e-4)
    assert out["attention"].shape == (3, 40) and (out["attention"][~mask] == 0).all()


def test_transmil_official_square_padding_copies_first_tokens():
    """Batch of one, mask-free: N=10 → 16 tokens where tokens 10..15 repeat tokens 0..5 (official code)."""
    torch.manual_seed(0)
    m = TransMIL(6, 2, embed_dim=16, heads=2, num_landmarks=4).eval()
    seen = {}
    m.layer1.norm.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0].detach()))
    x = torch.randn(1, 10, 6)
    out = m(x)
    h = seen["x"][0, 1:]  # drop the class token
    assert h.shape[0] == 16
    assert torch.equal(h[10:], h[:6])
    assert out["attention"].shape == (1, 10)
    # a padded batch in official mode gives each bag copies of its own tokens (no zeros leak in)
    xb = torch.cat([x, torch.zeros(1, 10, 6)], dim=0)
    xb[1, :4] = torch.randn(4, 6)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0] = True
    mask[1, :4] = True
    seen.clear()
    m(xb, mask)
    hb = seen["x"][1, 1:]
    assert torch.equal(hb[4:8], hb[:4])


def test_transmil_official_defaults():
    m = TransMIL(1024, 2)
    a = m.layer1.attn
    assert m.fc[0].out_features == 512 and a.heads == 8 and a.num_landmarks == 256 and a.pinv_iterations == 6
    assert not any(isinstance(l, torch.nn.Dropout) for l in m.fc)  # official fc has no dropout


def test_two_branch_fusion_splits_scales():
    torch.manual_seed(0)
    m = TwoBranchMIL(20, 2, split_dim=12, embed_dim=16, attn_dim=8).eval()
    x, mask = _batch(d=20)
    out = m(x, mask)
    assert out["logits"].shape == (3, 2) and out["attention_5x"].shape == (3, 40)
    x2 = x.clone()
    x2[..., 12:] = 0  # the 5x half matters
    assert not torch.allclose(m(x2, mask)["logits"], out["logits"])
    with pytest.raises(ValueError):
        TwoBranchMIL(20, 2, split_dim=20)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="unknown MIL model"):
        build_model("clam-mb", 8, 2)


def test_transmil_runs_a_50k_instance_bag():
    """50k instances → a 224×224 token grid; memory stays linear (class-token attention row, no n×n matrix)."""
    torch.manual_seed(0)
    m = TransMIL(32, 2, embed_dim=32, heads=2, num_landmarks=64)
    x = torch.randn(1, 50_000, 32)
    out = m(x)
    out["logits"].sum().backward()
    assert out["logits"].shape == (1, 2) and out["attention"].shape == (1, 50_000)
    assert torch.isfinite(out["attention"]).all() and m.fc[0].weight.grad is not None
