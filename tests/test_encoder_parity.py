"""TRIDENT parity of the baseline encoders (issue 22): for every fixture folder under ``$ZOOMFEAT_ENCODER_PARITY``
(default: the vendored ``tests/data/encoder_parity/<name>/``), the reduced variant with the fixture's formula
weights, written to a weights file and loaded by the registered encoder, turns the fixture's uint8 tiles into the
features TRIDENT computed (max relative error ≤ 1e-4) through ``encode`` — the path ``zoomfeat extract`` uses —
and the full-size builder on the meta device has exactly the manifest's checkpoint keys and shapes.

Seed, scale, tiles, key listing and reduced depth are read from each fixture, never assumed."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import DATA
from zoomfeat.encoders import create_encoder
from zoomfeat.encoders.baselines import SPECS, full_size_listing
from zoomfeat.encoders.baselines.common import checkpoint_shapes, checkpoint_state_dict
from zoomfeat.weights import WeightsMismatchError

REL_TOL = 1e-4
PARITY_DIR = Path(os.environ.get("ZOOMFEAT_ENCODER_PARITY") or DATA / "encoder_parity")
FIXTURES = sorted(p.parent for p in PARITY_DIR.glob("*/expected.npz"))


def _formula_entries(folder: Path) -> list[tuple]:
    cfg = json.loads(str(np.load(folder / "expected.npz")["config"]))
    return [(key, tuple(shape), init, int(cfg["seed"]), float(cfg["scale"]))
            for key, shape, init in cfg["state_dict"] if init != "keep"]


#: Formula tensors drawn for one fixture and due again in a later one (the ViT-g fixtures gigapath, hoptimus0,
#: hoptimus1 and uni_v2 share ~58M of them: same key, shape, init, seed and scale, so the same values): kept until
#: their last use, {entry: [tensor, uses left]}; at most one model's worth (~230 MB) is held at a time.
_SHARED: dict[tuple, list] = {}
_USES = __import__("collections").Counter(e for f in FIXTURES for e in _formula_entries(f))


def formula_weights(listing: list, template: dict, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """The fixture README's weight formula: ``[key, shape, init]`` → tensor (``keep`` → the template's value,
    left out when the built model does not hold it: derived buffers are optional in a checkpoint).

    Each float64 draw lands in one reused scratch buffer and is scaled there, in place (the same float64 operations
    in the same order as ``r * scale`` / ``1 + 0.02 * r`` / ``1 + 0.1 * r.abs()``, so the same bits): fresh 100-400 MB
    float64 temporaries per tensor made this 2-3x slower than the draws themselves. A tensor another fixture of
    this session also lists (same key, shape, init, seed, scale: the same values) is drawn once (``_SHARED``)."""
    sd = {}
    numel = [torch.Size(shape).numel() for _, shape, init in listing if init != "keep"]
    buf = torch.empty(max(numel, default=0), dtype=torch.float64)
    for key, shape, init in listing:
        if init == "keep":
            if key in template:
                sd[key] = template[key].clone()
            continue
        entry = (key, tuple(shape), init, int(seed), float(scale))
        if entry in _SHARED:
            held = _SHARED[entry]
            sd[key] = held[0]
            held[1] -= 1
            if held[1] <= 0:
                del _SHARED[entry]
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) ^ seed)
        r = buf[: torch.Size(shape).numel()].view(tuple(shape))
        torch.randn(tuple(shape), generator=g, dtype=torch.float64, out=r)
        {"normal": lambda: r.mul_(scale), "norm_weight": lambda: r.mul_(0.02).add_(1),
         "running_var": lambda: r.abs_().mul_(0.1).add_(1)}[init]()
        sd[key] = r.to(torch.float32)
        if _USES[entry] > 1:  # due again in a later fixture
            _SHARED[entry] = [sd[key], _USES[entry] - 1]
    return sd


def test_formula_weights_shared_between_fixtures_are_the_drawn_ones():
    """The session cache of formula tensors returns exactly what a fresh draw gives (a shared key of two fixtures,
    drawn with and without it)."""
    listing = [["blocks.0.norm1.weight", [8], "norm_weight"], ["blocks.0.attn.qkv.weight", [6, 4], "normal"]]
    entries = [(k, tuple(s), i, 3, 0.5) for k, s, i in listing]
    fresh = formula_weights(listing, {}, 3, 0.5)
    try:
        for e in entries:
            _USES[e] += 2
        first = formula_weights(listing, {}, 3, 0.5)  # drawn, then held for the second call
        assert all(e in _SHARED for e in entries)
        again = formula_weights(listing, {}, 3, 0.5)
    finally:
        for e in entries:
            _USES[e] -= 2
            _SHARED.pop(e, None)
    for k in fresh:
        assert torch.equal(fresh[k], first[k]) and torch.equal(fresh[k], again[k])
    assert fresh["blocks.0.norm1.weight"].sub(1).abs().max() < 0.1 and fresh["blocks.0.norm1.weight"].std() > 0


def reduced_depth(cfg: dict) -> int | None:
    """The reduced variant's depth from the fixture's overrides (timm ``depth``, HF ``num_hidden_layers``)."""
    over = cfg.get("reduced_overrides") or {}
    depth = over.get("depth", over.get("num_hidden_layers"))
    unknown = set(over) - {"depth", "num_hidden_layers"}
    assert not unknown, f"fixture overrides this test does not know: {unknown}"
    return None if depth is None else int(depth)


def keep_template(name: str, listing: list, depth: int | None) -> dict[str, torch.Tensor]:
    """Values of the ``keep`` tensors (BatchNorm counters, Swin index / mask buffers) as our build constructs
    them, under the checkpoint's names; empty (and nothing built) when the listing has none."""
    if not any(init == "keep" for _, _, init in listing):
        return {}
    spec = SPECS[name]
    model = spec.build(depth, None)
    out = {spec.ckpt_name(k): v for k, v in model.named_buffers()}
    out.update({spec.ckpt_name(k): v for k, v in model.state_dict().items()})
    return out


def load_fixture(folder: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    z = np.load(folder / "expected.npz")
    return json.loads(str(z["config"])), z["tiles"], z["features"]


def write_formula_checkpoint(folder: Path, tmp_path: Path) -> tuple[Path, dict, np.ndarray, np.ndarray]:
    cfg, tiles, feats = load_fixture(folder)
    name, depth = cfg["encoder"], reduced_depth(cfg)
    listing = cfg["state_dict"]
    sd = formula_weights(listing, keep_template(name, listing, depth), int(cfg["seed"]), float(cfg["scale"]))
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, cfg, tiles, feats


def check_parity(folder: Path, tmp_path: Path, turn: int | None = None) -> None:
    """The reduced encoder with the formula weights turns the fixture's tile ``turn`` (modulo the fixture's tile
    count; default: all tiles, one batch) into
    TRIDENT's features. In eval mode each tile's features depend on that tile alone, so the rows of a subset are
    the oracle's rows for that subset (one tile alone vs in the batch of 4: ≤ 2e-6 apart, measured)."""
    path, cfg, tiles, want = write_formula_checkpoint(folder, tmp_path)
    which = None if turn is None else [turn % len(tiles)]
    if which is not None:
        tiles, want = tiles[which], want[which]
    enc = create_encoder(cfg["encoder"], weights=path, depth=reduced_depth(cfg), precision="fp32")
    assert enc.dim == int(cfg["embedding_dim"]) == want.shape[1]
    got = enc.encode(tiles).numpy()  # uint8 tiles → PIL transform → model → output rule, as extraction runs it
    assert got.shape == want.shape
    abs_err = float(np.abs(got - want).max())
    rel_err = abs_err / float(np.abs(want).max())
    print(f"\nPARITY {cfg['encoder']}: max abs {abs_err:.3g}, max rel {rel_err:.3g}, dim {enc.dim}, "
          f"depth {reduced_depth(cfg)}, tiles {which if which is not None else 'all'}")
    assert rel_err <= REL_TOL, f"{cfg['encoder']}: max rel error {rel_err:.3g} (max abs {abs_err:.3g})"
    # and well below what the fixture says a wrong resize interpolation would move (resnet50: ~1e-4 absolute)
    manifest = json.loads((folder / "manifest.json").read_text())
    swap = (manifest.get(f"sensitivity_{cfg.get('set')}_set") or {}).get("other_interpolation_maxdiff") or 0.0
    assert swap == 0.0 or abs_err < 0.1 * swap, f"{cfg['encoder']}: max abs {abs_err:.3g} vs swap {swap:.3g}"
    assert enc.weights_sha256 and len(enc.weights_sha256) == 64
    assert enc.full_config()["interpolation"] == cfg["transform"][0]["interpolation"]


@pytest.mark.parametrize("folder", FIXTURES, ids=[p.name for p in FIXTURES])
def test_reduced_encoder_matches_trident(folder: Path, tmp_path: Path):
    """One of the fixture's tiles per encoder, a different one for each encoder in turn (the 11 vendored fixtures
    cover each of the 4 tiles 2-3 times): a forward of 4 tiles was most of this test's time (conch_v15's 448 px
    input: 6 s). All 4 tiles of every encoder: test_reduced_encoder_matches_trident_on_every_tile (slow)."""
    check_parity(folder, tmp_path, FIXTURES.index(folder))


@pytest.mark.slow
@pytest.mark.parametrize("folder", FIXTURES, ids=[p.name for p in FIXTURES])
def test_reduced_encoder_matches_trident_on_every_tile(folder: Path, tmp_path: Path):
    """All of the fixture's tiles in one batch, as TRIDENT computed them (by default
    test_reduced_encoder_matches_trident checks one tile per encoder, each tile on several encoders)."""
    check_parity(folder, tmp_path)


@pytest.mark.parametrize("folder", FIXTURES, ids=[p.name for p in FIXTURES])
def test_full_size_builder_has_the_manifest_keys(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    want = {e["key"]: tuple(e["shape"]) for e in manifest["full_model"]["state_dict"]}
    got = full_size_listing(SPECS[manifest["encoder"]])
    assert sorted(set(want) - set(got))[:5] == [] and sorted(set(got) - set(want))[:5] == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}
    assert SPECS[manifest["encoder"]].dim == manifest["embedding_dim"]["full"]


@pytest.mark.parametrize("folder", [p for p in FIXTURES if (p / "transform_check.npz").exists()],
                         ids=lambda p: p.name)
def test_transform_resize_crop_is_bit_identical_to_trident(folder: Path):
    cfg, tiles, _ = load_fixture(folder)
    z = np.load(folder / "transform_check.npz")
    got = SPECS[cfg["encoder"]].transform.resize_crop(tiles[z["tile_index"]])
    np.testing.assert_array_equal(got, z["transformed_u8"])


def test_vendored_fixtures_cover_every_baseline():
    """The default fixture set names every TRIDENT-parity encoder (the ``uni`` alias excepted)."""
    vendored = {p.name for p in (DATA / "encoder_parity").glob("*/expected.npz") for p in [p.parent]}
    assert vendored == set(SPECS) - {"uni"}


# ---------------------------------------------------------------------------------------------- loading rules


def test_mismatched_checkpoint_is_one_line_naming_the_keys(tmp_path: Path):
    with torch.device("meta"):
        skeleton = SPECS["uni_v1"].build(1, None)
    sd = {k: torch.zeros(s) for k, s in checkpoint_shapes(SPECS["uni_v1"], skeleton)[0].items()}
    sd.pop("blocks.0.ls1.gamma")
    sd["extra.weight"] = torch.zeros(2)
    sd["cls_token"] = torch.zeros(1, 1, 8)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsMismatchError) as info:
        create_encoder("uni_v1", weights=tmp_path / "bad.safetensors", depth=1)
    msg = str(info.value)
    assert "\n" not in msg and "1 missing (blocks.0.ls1.gamma)" in msg and "1 unexpected (extra.weight)" in msg
    assert "1 mis-shaped (cls_token (1, 1, 8) vs (1, 1, 1024))" in msg


def test_ctranspath_loads_with_or_without_derived_buffers(tmp_path: Path):
    """A timm_ctp-layout checkpoint (downsample at the end of a stage) loads with and without ``attn_mask`` /
    ``relative_position_index``, wrapped as ``{"model": …}`` with a classifier head, as the authors released it."""
    spec = SPECS["ctranspath"]
    full = create_encoder("ctranspath", random_init=True, depth=1)
    sd = {spec.ckpt_name(k): v for k, v in full.model.named_buffers()}
    sd.update({spec.ckpt_name(k): v for k, v in full.model.state_dict().items()})
    assert "layers.0.downsample.reduction.weight" in sd and "layers.0.blocks.1.attn_mask" in sd
    torch.save({"model": {**sd, "head.weight": torch.zeros(2, 768), "head.bias": torch.zeros(2)}},
               tmp_path / "ctranspath.pth")
    lean = {k: v for k, v in sd.items() if "attn_mask" not in k and "relative_position_index" not in k}
    save_file({k: v.contiguous() for k, v in lean.items()}, str(tmp_path / "lean.safetensors"))
    x = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8)
    a = create_encoder("ctranspath", weights=tmp_path / "ctranspath.pth", depth=1)
    b = create_encoder("ctranspath", weights=tmp_path / "lean.safetensors", depth=1)
    torch.testing.assert_close(a.encode(x), full.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(b.encode(x), full.encode(x), rtol=0, atol=0)


def test_uni_alias_builds_uni_v1_and_records_its_name(tmp_path: Path):
    a = create_encoder("uni", random_init=True, depth=1)
    b = create_encoder("uni_v1", random_init=True, depth=1)
    assert (a.name, b.name) == ("uni", "uni_v1") and a.dim == b.dim == 1024 and a.precision == "fp16"
    assert a.weights_sha256 == b.weights_sha256 and a.full_config()["depth"] == 1
    assert a.full_config()["resize_backend"] == "PIL"


@pytest.mark.parametrize("names", ["checkpoint", "native"])
def test_random_init_reduced_phikon_round_trips_through_a_weights_file(tmp_path: Path, names: str):
    """What other tests do to get a small baseline weights file: save a ``--depth`` random-init model (under the
    checkpoint's transformers-4 names, or the installed library's own) and load it back bit for bit."""
    a = create_encoder("phikon", random_init=True, depth=1)
    sd = checkpoint_state_dict(SPECS["phikon"], a.model) if names == "checkpoint" else a.model.state_dict()
    assert ("encoder.layer.0.attention.attention.query.weight" in sd) == (names == "checkpoint")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    b = create_encoder("phikon", weights=tmp_path, depth=1)  # a folder: model.safetensors
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    torch.testing.assert_close(b.encode(x), a.encode(x), rtol=0, atol=0)
    assert b.weights_path == str(tmp_path / "model.safetensors")


def test_trident_transform_takes_every_tile_form():
    """uint8 NHWC numpy, uint8 NCHW torch and float [0, 1] tiles give the same normalised batch; float tiles are
    rounded to uint8 before the PIL resize; non-square tiles are resized on their shorter side, then cropped."""
    from zoomfeat.encoders.baselines.common import TridentTransform

    t = TridentTransform(resize=224, crop=224, interpolation="bicubic")
    u8 = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    ref = t(u8)
    assert ref.shape == (2, 3, 224, 224) and ref.dtype == torch.float32
    chw = torch.from_numpy(u8).permute(0, 3, 1, 2)
    torch.testing.assert_close(t(chw), ref, rtol=0, atol=0)
    torch.testing.assert_close(t(chw.float() / 255), ref, rtol=0, atol=0)
    torch.testing.assert_close(t(u8[0]), ref[:1], rtol=0, atol=0)
    assert t.resize_crop(np.zeros((1, 256, 320, 3), np.uint8)).shape == (1, 224, 224, 3)
    assert TridentTransform(resize=224).resize_crop(np.zeros((1, 256, 320, 3), np.uint8)).shape == (1, 224, 280, 3)
    with pytest.raises(ValueError, match="images must be"):
        t(np.zeros((2, 5, 5), np.uint8)[None, None])


def test_conch_checkpoint_with_another_position_grid_is_resampled(tmp_path: Path):
    """A CONCH v1.5 checkpoint whose ``trunk.pos_embed`` holds a 32×32 grid loads (resampled to 14×14 at load time,
    as TRIDENT does); any other mis-shaped tensor is still refused."""
    from timm.layers import resample_abs_pos_embed

    a = create_encoder("conch_v15", random_init=True, depth=1)
    sd = dict(a.model.state_dict())
    big = torch.randn(1, 1 + 32 * 32, 1024)
    save_file({**sd, "trunk.pos_embed": big}, str(tmp_path / "c.safetensors"))
    b = create_encoder("conch_v15", weights=tmp_path / "c.safetensors", depth=1)
    want = resample_abs_pos_embed(big, new_size=[14, 14], num_prefix_tokens=1, interpolation="bilinear",
                                  antialias=False)
    torch.testing.assert_close(b.model.trunk.pos_embed.detach(), want, rtol=0, atol=0)
    save_file({**sd, "ln_contrast.weight": torch.ones(512)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsMismatchError, match="1 mis-shaped"):
        create_encoder("conch_v15", weights=tmp_path / "bad.safetensors", depth=1)
