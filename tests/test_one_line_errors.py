"""Issue 25, finding 5: the tracebacks that were left are one line and a documented exit code — an output folder that
cannot be created, `mil predict` on a pickle renamed model.safetensors / task.classes shorter than n_out /
--ensemble with a pickled best.pt, a full disk while writing timings.json (the summary is still written), and
`extract --workers 2` on a slide whose pixels fail to decode (no DataLoader ``__del__`` noise)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mil.synthetic import write_bags
from tests._fx_extract import run_forked, zoomfeat_main
from zoomfeat.cli import main

ROOT = Path(__file__).resolve().parents[1]
HP = ["hparams.embed_dim=16", "hparams.attn_dim=8", "hparams.epochs=2", "hparams.min_epochs=0",
      "hparams.patience=1", "hparams.progress=false", "hparams.wandb=false", "n_folds=2",
      "val_fraction=0.34", "heatmaps=0"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    return err


def test_output_folder_that_cannot_be_created(tmp_path, monkeypatch, capsys):
    from zoomfeat.slides.synthetic import make_slide

    make_slide(tmp_path / "slides" / "s.tiff", size_20x=(512, 512), seed=0, subtype=0)
    ro = tmp_path / "ro"
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["tile", str(tmp_path / "slides"), "--out", str(ro / "tiles"), "--no-progress"]) == 2
    assert "Read-only file system" in _err_line(capsys)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    bags, labels = write_bags(root, n_slides=12, dim=8, seed=0, encoder="tiny-vit")
    out = root / "model"
    assert main(["mil", "train", "--config", "configs/mil/abmil_hrd.yaml", "--out", str(out), "--cv",
                 f"labels={labels}", f"bags={bags}", *HP]) == 0
    return {"model": out, "bags": bags, "root": root}


def _copy_model(model, dst):
    import shutil

    shutil.copytree(model["model"], dst)
    return dst


def test_predict_pickle_renamed_safetensors(model, tmp_path, capsys):
    m = _copy_model(model, tmp_path / "m")
    (m / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    capsys.readouterr()
    assert main(["mil", "predict", str(m), "--bags", str(model["bags"]), "--out", str(tmp_path / "p")]) == 2
    assert "refusing to load" in _err_line(capsys)


def test_predict_classes_shorter_than_n_out(model, tmp_path, capsys):
    m = _copy_model(model, tmp_path / "m")
    meta = json.loads((m / "model.json").read_text())
    meta["task"]["classes"] = meta["task"]["classes"][:1]
    (m / "model.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["mil", "predict", str(m), "--bags", str(model["bags"]), "--out", str(tmp_path / "p")]) == 2
    assert "task.classes" in _err_line(capsys)


def test_predict_ensemble_with_pickled_best_pt(model, tmp_path, capsys):
    import torch

    cv = _copy_model(model, tmp_path / "m") / "cv"
    torch.save({"x": Evil()}, cv / "fold0" / "best.pt")
    capsys.readouterr()
    assert main(["mil", "predict", "--ensemble", str(cv), "--bags", str(model["bags"]),
                 "--out", str(tmp_path / "p")]) == 2
    assert "refusing to load" in _err_line(capsys)


def test_yaml_syntax_error_in_the_weights_registry_names_it(tmp_path, capsys):
    """The weights registry was parsed from a string, so its YAML error said ``in "<unicode string>"``."""
    bad = tmp_path / "registry.yaml"
    bad.write_text("phikon: [\n")
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "s.tiff").write_bytes(b"never read: the registry is read first")
    assert main(["extract", str(tmp_path / "slides"), "--out", str(tmp_path / "out"), "--encoder", "phikon",
                 "--weights-registry", str(bad), "--no-progress"]) == 2
    err = _err_line(capsys)
    assert "registry.yaml" in err and "line 2" in err


@pytest.mark.parametrize("card", ["[1]", "{}", "{", '{"model": {"name": "abmil"}, "task": {"name": "binary"}}'])
def test_predict_broken_model_card_is_one_line_naming_it(model, tmp_path, capsys, card):
    """A ``model.json`` that is a list was a ``TypeError`` traceback (exit 1); ``{}`` said only ``'model'`` and broken
    JSON did not name the file (issue-25 re-trial). Now one line naming model.json, exit 2."""
    m = _copy_model(model, tmp_path / "m")
    (m / "model.json").write_text(card)
    capsys.readouterr()
    assert main(["mil", "predict", str(m), "--bags", str(model["bags"]), "--out", str(tmp_path / "p")]) == 2
    assert "model.json: not a zoomfeat model card" in _err_line(capsys)


@pytest.mark.parametrize("kind", ["object", "junk"])
def test_predict_pickled_standardizer_is_one_line_naming_it(model, tmp_path, capsys, kind):
    """A ``standardize.npz`` holding an object array, or not an .npz at all (numpy then advises ``allow_pickle``),
    is refused in one line naming the file, exit 2."""
    import numpy as np

    m = _copy_model(model, tmp_path / "m")
    if kind == "object":
        np.savez(m / "standardize.npz", mean=np.array([Evil()], dtype=object), std=np.ones(8))
    else:
        (m / "standardize.npz").write_bytes(pickle.dumps(Evil()))
    capsys.readouterr()
    assert main(["mil", "predict", str(m), "--bags", str(model["bags"]), "--out", str(tmp_path / "p")]) == 2
    err = _err_line(capsys)
    assert "standardize.npz: not a standardizer" in err and "unsafely" not in err


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two small slides, tiled; then syn0's level-0 tile data is overwritten (its thumbnail still reads, so it tiles,
    but extracting it fails inside the DataLoader workers)."""
    from zoomfeat.slides.synthetic import make_slide

    root = tmp_path_factory.mktemp("bad_pixels")
    for i in range(2):
        make_slide(root / "slides" / f"syn{i}.tiff", size_20x=(1024, 1024), seed=i, subtype=0)
    p = root / "slides" / "syn0.tiff"
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.seek(size // 8)
        fh.write(bytes(range(256)) * (size // 3 // 256))
    assert main(["tile", str(root / "slides"), "--out", str(root / "tiles"), "--no-progress"]) == 0
    return root


def test_disk_full_writing_timings_still_writes_summary(slides, tmp_path, monkeypatch, capsys):
    from zoomfeat import extract

    real = extract.write_json_atomic

    def full(path, obj):
        if Path(path).name.startswith("timings"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, obj)

    monkeypatch.setattr(extract, "write_json_atomic", full)  # the extractor's writer of timings.json
    (tmp_path / "one").mkdir()
    os.symlink(slides / "slides" / "syn1.tiff", tmp_path / "one" / "syn1.tiff")
    rc = main(["extract", str(tmp_path / "one"), "--tiles", str(slides / "tiles"), "--encoder", "tiny-vit",
               "--out", str(tmp_path / "f"), "--workers", "0", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "could not write" in err and "timings.json" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "f" / "features_tiny-vit" / "summary.json").read_text())
    assert summary["counts"] == {"done": 1}


def _workers_2_args(slides, tmp_path) -> list[str]:
    return ["extract", str(slides / "slides"), "--tiles", str(slides / "tiles"), "--encoder", "tiny-vit", "--out",
            str(tmp_path / "f"), "--workers", "2", "--batch-size", "4", "--no-progress"]


def _check_no_dataloader_noise(r) -> None:
    assert r.returncode == 3, r.stderr
    assert "FAILED syn0" in r.stdout
    assert "Traceback" not in r.stderr and "can only test a child process" not in r.stderr, r.stderr


@pytest.mark.slow
def test_workers_2_failing_slide_prints_no_dataloader_noise(slides, tmp_path):
    """Slow form (a `python -m zoomfeat` subprocess, interpreter shutdown included); the default suite runs the
    same checks on a forked child: test_workers_2_failing_slide_prints_no_dataloader_noise_fast."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("ZOOMFEAT_DEBUG", None)
    cmd = [sys.executable, "-m", "zoomfeat", *_workers_2_args(slides, tmp_path)]
    _check_no_dataloader_noise(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300))


def test_workers_2_failing_slide_prints_no_dataloader_noise_fast(slides, tmp_path):
    """Fast twin of the test above: the run is a forked child whose stdout / stderr are captured at the file
    descriptors (its DataLoader workers' output included); it collects its garbage before exiting, so the
    iterators' ``__del__`` runs there too."""
    run = zoomfeat_main(_workers_2_args(slides, tmp_path))

    def child():
        import gc

        os.environ.pop("ZOOMFEAT_DEBUG", None)
        rc = run()
        gc.collect()
        return rc

    _check_no_dataloader_noise(run_forked(child, tmp_path / "_fork", {"WANDB_MODE": "disabled"}))


@pytest.mark.parametrize("verb", [["mil", "cv"], ["tile", "SLIDES", "--out", "OUT"], ["compare", "--out", "OUT"]])
def test_yaml_syntax_error_in_a_config_is_one_line(tmp_path, capsys, verb):
    """A YAML syntax error in ``--config`` used to be a ``yaml.parser.ParserError`` traceback, exit 1, in every verb
    that takes a config (found by the issue-25 re-trial); now one line naming the file, exit 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [\n")
    (tmp_path / "slides").mkdir()
    args = [{"SLIDES": str(tmp_path / "slides"), "OUT": str(tmp_path / "out")}.get(a, a) for a in verb]
    assert main([*args, "--config", str(bad)]) == 2
    err = _err_line(capsys)
    assert "bad.yaml" in err and "line 2" in err
