"""Released-checkpoint handling: key coverage of full-size releases, safe loading, bad input, save/load round trips."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import MANIFESTS, MICRO_LDM, TINY_LDM, needs_tiny
from zoomfeat.config import CONFIG_DIR, load_yaml



@pytest.fixture(scope="module")
def sd():
    from zoomfeat.ldm.official import load_official_state_dict

    return load_official_state_dict(MICRO_LDM / "weights.ckpt")



@pytest.fixture(scope="module")
def ref():
    return dict(np.load(MICRO_LDM / "reference.npz"))


def _save(tmp_path, obj, name="w.ckpt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def _outputs(m, ref):
    x, t, c4 = (torch.from_numpy(ref[k]) for k in ("x_t", "t", "context_4"))
    with torch.no_grad():
        return [
            m.condition(torch.from_numpy(ref["ssl_raw_4"]), torch.from_numpy(ref["mag_4"])),
            m.predict_eps(x, t, c4),
            m.decode(torch.from_numpy(ref["latent_prequant"])),
            m.encode(torch.from_numpy(ref["image"])),
        ]


# ------------------------------------------------------------------------------------------- key coverage
@pytest.mark.parametrize("name", ["brca", "naip"])
def test_full_size_release_keys_all_mapped(name):
    from zoomfeat.ldm.official import SKIPPED_KEYS, check_official_keys

    manifest = json.loads((MANIFESTS / f"zoomldm_{name}_keys.json").read_text())
    assert len(manifest) == 1750
    report = check_official_keys(manifest, load_yaml(CONFIG_DIR / "ldm" / f"zoomldm_{name}.yaml"))
    assert report.n_accounted == 1750
    assert {k: len(v) for k, v in report.loaded.items()} == {"unet": 688, "vq": 205, "summarizer": 155}
    assert sorted(report.skipped) == sorted(SKIPPED_KEYS) and len(report.skipped) == 14
    assert report.unet_source == "ema" and len(report.unused_alternate) == 688


def test_full_size_release_rejects_wrong_config():
    """The NAIP release (4 magnification embeddings) does not fit the BRCA config (8)."""
    from zoomfeat.ldm.official import CheckpointMismatchError, check_official_keys

    manifest = json.loads((MANIFESTS / "zoomldm_naip_keys.json").read_text())
    with pytest.raises(CheckpointMismatchError, match=r"mag_embedding.weight: checkpoint \(4, 512\) vs config \(8, 512\)"):
        check_official_keys(manifest, load_yaml(CONFIG_DIR / "ldm" / "zoomldm_brca.yaml"))


def test_full_size_param_counts():
    from zoomfeat.ldm.modules import build_empty_modules

    unet, vq, summ = build_empty_modules(load_yaml(CONFIG_DIR / "ldm" / "zoomldm_brca.yaml"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 400_920_579  # spec §1.2
    assert count(vq) == 55_322_782  # spec §1.3
    assert count(summ) == 38_656_000  # spec §1.4


@needs_tiny
def test_tiny_config_derived_from_official_matches_ours():
    from zoomfeat.ldm.official import config_from_official, load_official_config

    derived = config_from_official(load_official_config(TINY_LDM / "config.yaml"), name="zoomldm_tiny")
    assert derived == load_yaml(CONFIG_DIR / "ldm" / "zoomldm_tiny.yaml")


# ------------------------------------------------------------------------------------------- safe loading
def test_state_dict_wrapper_and_legacy_mlp_names(tmp_path, sd, ref, model):
    from zoomfeat.ldm import ZoomLDM

    legacy = {k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v for k, v in sd.items()}
    assert any(".mlp.linear_1." in k for k in legacy)
    p = _save(tmp_path, {"state_dict": legacy})
    m = ZoomLDM.from_official(p, MICRO_LDM / "config.yaml")
    for a, b in zip(_outputs(m, ref), _outputs(model, ref)):
        assert torch.equal(a, b)


def test_pickle_with_objects_is_refused(tmp_path, sd):
    from zoomfeat.ldm import ZoomLDM

    p = _save(tmp_path, {"state_dict": dict(sd), "hyper_parameters": argparse.Namespace(lr=1.0)})
    with pytest.raises(ValueError, match="refusing to load.*non-tensor Python objects"):
        ZoomLDM.from_official(p, MICRO_LDM / "config.yaml")


def test_non_tensor_entries_and_missing_file(tmp_path, sd):
    from zoomfeat.ldm.official import load_official_state_dict

    with pytest.raises(ValueError, match="not tensors.*epoch"):
        load_official_state_dict(_save(tmp_path, {**sd, "epoch": 3}))
    with pytest.raises(FileNotFoundError):
        load_official_state_dict(tmp_path / "nope.ckpt")


def test_unexpected_and_missing_keys_are_named(sd):
    from zoomfeat.ldm.official import CheckpointMismatchError, config_from_official, load_official_config
    from zoomfeat.ldm.official import modules_from_state_dict as load

    cfg = config_from_official(load_official_config(MICRO_LDM / "config.yaml"))
    extra = dict(sd)
    extra["cond_stage_model.extra_head.weight"] = torch.zeros(2)
    extra["logvar"] = torch.zeros(1000)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*logvar"):
        load(extra, cfg)
    del extra["logvar"]
    with pytest.raises(CheckpointMismatchError, match="not in the model.*extra_head"):
        load(extra, cfg)
    for gone, pattern in [
        (["cond_stage_model.final_proj.bias"], "missing from checkpoint.*final_proj.bias"),
        (["first_stage_model.decoder.conv_out.bias"], "decoder.conv_out.bias"),
        (["first_stage_model.quantize.embedding.weight"], "quantize.embedding.weight missing"),
        (["model.diffusion_model.out.2.bias", "model_ema.diffusion_modelout2bias"], r"model.diffusion_model.out.2.bias"),
        (["model_ema.diffusion_modelout2bias"], r"missing EMA \['model_ema.diffusion_modelout2bias'\]"),
    ]:
        with pytest.raises(CheckpointMismatchError, match=pattern):
            load({k: v for k, v in sd.items() if k not in gone}, cfg)


def test_config_checkpoint_disagreement_lists_mismatched_tensors(tmp_path):
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.ldm.official import CheckpointMismatchError

    cfg = yaml.safe_load((MICRO_LDM / "config.yaml").read_text())
    cfg["model"]["params"]["cond_stage_config"]["params"]["mag_levels"] = 4
    cfg["model"]["params"]["cond_stage_config"]["params"]["vit_mlp_dim"] = 96
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointMismatchError) as ei:
        ZoomLDM.from_official(MICRO_LDM / "weights.ckpt", p)
    msg = str(ei.value)
    assert "mag_embedding.weight: checkpoint (8, 16) vs config (4, 16)" in msg
    assert "encoder.layers.encoder_layer_0.mlp.0.weight: checkpoint (40, 16) vs config (96, 16)" in msg
    assert "shape mismatches (7)" in msg  # mag embedding + mlp.0.{weight,bias}, mlp.3.weight × 2 layers


def test_ema_choice_and_missing_ema(tmp_path, sd, ref, model):
    from zoomfeat.ldm import ZoomLDM

    no_ema = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    m = ZoomLDM.from_official(_save(tmp_path, no_ema), MICRO_LDM / "config.yaml")
    assert m.conversion_report.unet_source == "online"
    online = ZoomLDM.from_official(MICRO_LDM / "weights.ckpt", MICRO_LDM / "config.yaml", ema=False)
    a, b = _outputs(m, ref)[1], _outputs(online, ref)[1]
    assert torch.equal(a, b)
    assert model.conversion_report.unet_source == "ema"
    assert model.config["source"]["skipped"] and len(model.config["source"]["skipped"]) == 14


# ------------------------------------------------------------------------------------------- round trips
def test_convert_cli_round_trip(tmp_path, model, ref):
    from zoomfeat.cli import main
    from zoomfeat.ldm import ZoomLDM

    out = tmp_path / "tiny_model"
    rc = main(["convert", str(MICRO_LDM / "weights.ckpt"), str(MICRO_LDM / "config.yaml"), str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["summarizer", "unet", "vq", "zoomldm_config.yaml"]
    for sub in ("unet", "vq", "summarizer"):
        assert (out / sub / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ZoomLDM.from_pretrained(out)
    for a, b in zip(_outputs(loaded, ref), _outputs(model, ref)):
        assert torch.equal(a, b)
    assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)
    assert loaded.mag_labels == model.mag_labels and loaded.ssl_dim == 24 and loaded.context_dim == 16
    # re-saving over an existing model folder works; a foreign non-empty folder is refused
    loaded.save_pretrained(out)
    assert ZoomLDM.from_pretrained(out) is not None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        loaded.save_pretrained(foreign)
    assert (foreign / "keep.txt").read_text() == "x"


def test_convert_cli_reports_bad_checkpoint(tmp_path, capsys):
    from zoomfeat.cli import main

    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": argparse.Namespace()}, bad)
    rc = main(["convert", str(bad), str(MICRO_LDM / "config.yaml"), str(tmp_path / "out")])
    assert rc == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_from_config_random_init_save_load(tmp_path):
    from zoomfeat.ldm import ZoomLDM

    torch.manual_seed(0)
    m = ZoomLDM.from_config(CONFIG_DIR / "ldm" / "zoomldm_tiny.yaml")
    assert (m.latent_channels, m.latent_size, m.image_size, m.mag_levels) == (3, 16, 64, 8)
    m.save_pretrained(tmp_path / "m")
    m2 = ZoomLDM.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        c = m.condition(torch.randn(1, 48, 2, 2), "10x")
        # identical weights; kernels may pick a different memory layout for freshly initialised tensors
        torch.testing.assert_close(m.predict_eps(x, 10, c), m2.predict_eps(x, 10, c), rtol=0, atol=1e-5)
    for name in ("unet", "vq", "summarizer"):
        a, b = getattr(m, name).state_dict(), getattr(m2, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- conditioning API
def test_bad_ssl_grids_are_clear_errors(model):
    with pytest.raises(ValueError, match="3x3 is not supported"):
        model.condition(torch.randn(1, 24, 3, 3), 0)
    with pytest.raises(ValueError, match="4x8 is not supported"):
        model.condition(torch.randn(1, 24, 4, 8), 0)
    with pytest.raises(ValueError, match="has 32 channels but this model expects 24"):
        model.condition(torch.randn(1, 32, 4, 4), 0)
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        model.condition(torch.randn(24), 0)
    with pytest.raises(ValueError, match="Summarizer takes square 1x1, 2x2, 4x4 or 8x8"):
        model.summarizer(torch.randn(1, 24, 16, 16), torch.tensor([0]))


def test_magnification_forms(model, ref):
    g = torch.from_numpy(ref["ssl_raw_2"])  # mags [1, 0]
    with torch.no_grad():
        want = model.condition(g, torch.tensor([1, 0]))
        assert torch.equal(model.condition(g, ["10x", "20x"]), want)
        assert torch.equal(model.condition(g, [1, "20x"]), want)
        assert torch.equal(model.condition(g[:1], "10x"), want[:1])
        assert torch.equal(model.condition(g, 0)[1], want[1])
    with pytest.raises(ValueError, match="not a ZoomLDM scale"):
        model.condition(g, "3x")
    with pytest.raises(ValueError, match="3 magnifications for a batch of 2"):
        model.condition(g, [0, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        model.condition(g, 9)


def test_no_cfg_dropout_in_condition_only_in_drop_condition(model, ref):
    assert model.summarizer.config.p_uncond == pytest.approx(0.1)
    g = torch.from_numpy(ref["ssl_raw_1"]).repeat(16, 1, 1, 1)  # 32 grids
    model.train()
    try:
        with torch.no_grad():
            c = model.condition(g, 0)
    finally:
        model.eval()
    assert (c.abs().amax(dim=(1, 2)) > 0).all(), "condition() must never drop to the null context"
    gen = torch.Generator().manual_seed(0)
    dropped = model.drop_condition(c, p_uncond=0.5, generator=gen)
    zero = dropped.abs().amax(dim=(1, 2)) == 0
    assert 0 < int(zero.sum()) < 32
    assert torch.equal(dropped[~zero], c[~zero])
    assert torch.equal(model.drop_condition(c, p_uncond=0.0), c)
    assert torch.equal(model.null_context(3), torch.zeros(3, 65, 16))


def test_add_noise_matches_schedule(model):
    z, eps = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    t = torch.tensor([0, 999])
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(model.add_noise(z, eps, t), a.sqrt() * z + (1 - a).sqrt() * eps, atol=1e-6)
