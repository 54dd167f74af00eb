"""The training config (one dataclass tree holds every default; YAML and overrides only change it), its path lookup,
the one ZoomLDM loader of ``make_model`` and the one wandb helper (:mod:`zoomfeat.tracking`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import MICRO_LDM, ROOT
from zoomfeat.config import CONFIG_DIR, load_yaml, to_dict


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("synthetic", "ssl_encoder", "tile_kwargs"):  # free-form mappings
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_defaults_are_the_official_recipe():
    """Spec §3: AdamW lr 2e-5, wd 0.01, 1000-step warm-up, EMA 0.9999, CFG dropout 0.1, uniform magnification."""
    from zoomfeat.train.config import TrainConfig

    c = TrainConfig()
    assert (c.train.lr, c.train.weight_decay, c.train.warmup_steps, c.train.lr_scheduler) == \
        (2e-5, 0.01, 1000, "constant_with_warmup")
    assert (c.train.ema_decay, c.train.p_uncond, c.dataset.mag_sampling) == (0.9999, 0.1, "uniform")
    assert (c.model.init, c.first_stage.train, c.dataset.build, c.train.max_grad_norm) == ("config", False, None, None)
    assert c.wandb.enabled and c.wandb.project == "zoomfeat-train"
    assert TrainConfig().train.betas is not c.train.betas  # no shared mutable defaults


@pytest.mark.parametrize("name", ["tiny.yaml", "brca_finetune.yaml"])
def test_yaml_loads_unchanged_and_complete(name):
    """Every value a YAML names is kept as written; every other key is the dataclass default; no key is missing."""
    from zoomfeat.train.config import BuildConfig, TrainConfig, load_train_config

    raw = _leaves(load_yaml(CONFIG_DIR / "train" / name))
    got = _leaves(load_train_config(f"train/{name}"))
    defaults = _leaves(to_dict(TrainConfig()))
    if raw.get("dataset.build") is not None or any(k.startswith("dataset.build.") for k in raw):
        del defaults["dataset.build"]
        defaults.update(_leaves(to_dict(BuildConfig()), "dataset.build."))
    assert set(got) == set(defaults)
    for key in got:
        assert got[key] == raw.get(key, defaults[key]), key


def test_unknown_keys_are_one_line_errors_naming_them(tmp_path):
    from zoomfeat.train.config import as_train_config, load_train_config

    with pytest.raises(ValueError, match=r"train: unknown option\(s\) 'lrr'") as ei:
        load_train_config("train/tiny.yaml", ["train.lrr=1e-4"])
    assert "\n" not in str(ei.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  root: x\n  nworkers: 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: dataset: unknown option\(s\) 'nworkers'"):
        load_train_config(bad)
    with pytest.raises(ValueError, match=r"training config: dataset: build: unknown option\(s\) 'patchpx'"):
        as_train_config({"dataset": {"build": {"patchpx": 64}}})


def test_train_refuses_unknown_key_before_any_work(tmp_path):
    from zoomfeat.train.loop import train

    with pytest.raises(ValueError, match="'warmup'"):
        train({"train": {"warmup": 3}}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_overrides_and_numbers():
    """``1e-4`` (no dot) is a str to YAML: number fields are cast; overrides reach nested sections."""
    from zoomfeat.train.config import as_train_config, load_train_config

    cfg = load_train_config("train/tiny.yaml", ["train.lr=1e-4", "train.sample.steps=3", "first_stage.lr=3e-3",
                                                "dataset.scales=[3,4]"])
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["sample"]["steps"] == 3 and cfg["first_stage"]["lr"] == 3e-3 and cfg["dataset"]["scales"] == [3, 4]
    assert cfg["train"]["warmup_steps"] == 20  # untouched YAML value
    assert as_train_config({"train": {"max_steps": "1e3"}}).train.max_steps == 1000
    with pytest.raises(ValueError, match="lr must be a number"):
        as_train_config({"train": {"lr": "fast"}})


def test_resolve_path_needs_no_repo_checkout(tmp_path, monkeypatch):
    """Relative model paths: cwd, then the packaged configs (with or without a leading ``configs/``), else the run
    folder — never the repository root."""
    from zoomfeat.train.config import resolve_path

    monkeypatch.chdir(tmp_path)
    assert resolve_path("ldm/zoomldm_tiny.yaml", tmp_path / "run") == CONFIG_DIR / "ldm" / "zoomldm_tiny.yaml"
    assert resolve_path("configs/ldm/zoomldm_tiny.yaml", tmp_path / "run") == CONFIG_DIR / "ldm" / "zoomldm_tiny.yaml"
    (tmp_path / "ldm").mkdir()
    (tmp_path / "ldm" / "zoomldm_tiny.yaml").write_text("{}")
    assert resolve_path("ldm/zoomldm_tiny.yaml", tmp_path / "run") == tmp_path / "ldm" / "zoomldm_tiny.yaml"
    assert resolve_path("README.md", tmp_path / "run") == tmp_path / "run" / "README.md"  # not ROOT/README.md
    assert resolve_path(str(MICRO_LDM), tmp_path) == MICRO_LDM


def test_docs_option_table_is_generated_from_the_dataclasses():
    from zoomfeat.train.config import fields_table, options_markdown

    assert options_markdown() in (ROOT / "docs" / "training.md").read_text()
    keys = [k for k, _ in fields_table()]
    assert len(keys) == len(set(keys)) and {"train.lr", "train.sample.n", "dataset.build.pool_to", "wandb.name"} <= set(keys)


def test_make_model_loads_checkpoints_through_zoomldm_load(tmp_path):
    """``official`` (config.yaml beside the .ckpt by default, EMA or online UNet) and ``pretrained`` (a folder)."""
    from zoomfeat.ldm import ZoomLDM
    from zoomfeat.train.loop import make_model

    ref = ZoomLDM.from_official(MICRO_LDM / "weights.ckpt", MICRO_LDM / "config.yaml", ema=True)
    got = make_model({"model": {"init": "official", "ckpt": str(MICRO_LDM / "weights.ckpt")}})
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    online = make_model({"model": {"init": "official", "ckpt": str(MICRO_LDM / "weights.ckpt"), "ema": False,
                                   "official_config": str(MICRO_LDM / "config.yaml")}})
    assert not all(torch.equal(a, b) for a, b in zip(ref.unet.parameters(), online.unet.parameters()))
    ref.save_pretrained(tmp_path / "saved")
    folder = make_model({"model": {"init": "pretrained", "path": "saved"}}, base=tmp_path)  # relative: run folder
    for a, b in zip(ref.unet.parameters(), folder.unet.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="model.init: official needs model.ckpt"):
        make_model({"model": {"init": "official"}})
    with pytest.raises(ValueError, match="model.init must be"):
        make_model({"model": {"init": "hub"}})


# ---------------------------------------------------------------------------------------------- zoomfeat.tracking
def test_wandb_offline_by_default_and_resumes_stored_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from zoomfeat.tracking import ID_FILE, WandbRun

    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = WandbRun("zoomfeat-test", name="a", config={"x": 1}, out_dir=tmp_path, resume=True)
    assert run.active and run.run.settings.mode == "offline"
    run.log({"loss": 1.0, "loss_mag3": None, "loss_mag4": float("nan")}, step=1)  # None / NaN are dropped
    run.finish()
    run_id = (tmp_path / ID_FILE).read_text()
    again = WandbRun("zoomfeat-test", out_dir=tmp_path, resume=True)
    assert again.run.id == run_id
    again.finish()
    # both runs log under the same id (their folders are named by start second, so two quick runs may share one)
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))


def test_wandb_disabled_or_broken_never_raises(tmp_path, monkeypatch):
    from mil.trainer import RunLogger
    from zoomfeat.tracking import WandbRun

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not WandbRun("p", out_dir=tmp_path).active
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not WandbRun("p", out_dir=tmp_path, enabled=False).active
    assert not WandbRun("p", out_dir=None).active  # plain API call: nowhere to put a run
    wandb = pytest.importorskip("wandb")

    def broken(**kw):
        raise RuntimeError("no wandb service")

    monkeypatch.setattr(wandb, "init", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = RunLogger(True, "zoomfeat-mil", "fold0", {"lr": 1}, tmp_path)  # the MIL heads use the same helper
    assert isinstance(run, WandbRun) and not run.active
    assert [str(w.message) for w in caught] == ["wandb disabled (RuntimeError: no wandb service)"]
    run.log({"loss": 1.0}, step=0)
    run.finish()
    assert not Path(tmp_path / "wandb_id.txt").exists()
