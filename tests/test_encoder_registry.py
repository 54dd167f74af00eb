"""`@register_encoder`: one decorated class in this file is all it takes to extract with a new encoder — the CLI
choices, its own flags (from its options table), --config, the weights check and the bag all come from the registry.
The bag is checked against the class's features computed by brute force on tiles read independently."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tests._fx_extract import run_forked, zoomfeat_main
from tests.conftest import SLIDES
from zoomfeat.bags import bag_path, load_bag
from zoomfeat.cli import main
from zoomfeat.encoders import EncoderOptions, TileEncoder, option, register_encoder, to_float_images

CMU = SLIDES / "cmu_small_region.svs"
NAME = "test-mean-rgb"


@dataclass
class MeanRGBOptions(EncoderOptions):
    scale: float = option(1.0, "multiply the mean colour by this", type=float)


@register_encoder(NAME, options=MeanRGBOptions)
class MeanRGB(TileEncoder):
    """Mean colour of a tile (×scale), plus what its context says: 1 at 5x, and the tile's level-0 x."""

    dim = 5

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.config = {"scale": scale}

    def encode(self, images, ctx=None):
        import torch

        rgb = to_float_images(images).mean(dim=(2, 3)) * self.scale
        n = len(rgb)
        mag = torch.full((n, 1), float(ctx.mag == "5x"))
        x = torch.as_tensor(np.asarray(ctx.coords, np.float32)[:, :1])
        return torch.cat([rgb, mag, x], 1)


BUILT: list = []


@register_encoder("test-needs-weights", needs_weights=True)
class NeedsWeights(TileEncoder):
    """An encoder that cannot run without a weights file."""

    dim = 1

    def __init__(self, weights):
        BUILT.append(weights)


@pytest.fixture(scope="module", autouse=True)
def _leave_the_registry_as_found():
    yield
    from zoomfeat.encoders import unregister_encoder

    for name in (NAME, "test-needs-weights"):
        unregister_encoder(name)


def _brute_force(bag, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of every 20x tile and 5x region, read one by one from the slide."""
    from zoomfeat.slides.reader import open_slide

    s, s5, px = bag.attrs["patch_size_level0"], bag.attrs["patch_size_level0_5x"], bag.attrs["patch_size"]
    with open_slide(CMU) as wsi:
        m20 = [np.asarray(wsi.read_region_l0(int(x), int(y), s, px), np.float64).mean((0, 1)) for x, y in bag.coords]
        m5 = [np.asarray(wsi.read_region_l0(int(x), int(y), s5, px), np.float64).mean((0, 1)) for x, y in bag.coords_5x]
    return np.array(m20) / 255 * scale, np.array(m5) / 255 * scale


def test_registered_class_extracts_from_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["extract", str(CMU), "--encoder", NAME, "--scale", "2", "--out", str(out), "--workers", "0",
               "--no-progress"])
    assert rc == 0
    bag = load_bag(bag_path(out, NAME, "cmu_small_region"))
    assert bag.features.shape == (37, 5) and bag.features_5x.shape == (6, 5)
    want20, want5 = _brute_force(bag, 2.0)
    np.testing.assert_allclose(bag.features[:, :3], want20, atol=1e-5)
    np.testing.assert_allclose(bag.features_5x[:, :3], want5, atol=1e-5)
    assert (bag.features[:, 3] == 0).all() and (bag.features_5x[:, 3] == 1).all()  # ctx.mag reached the encoder
    np.testing.assert_array_equal(bag.features[:, 4], bag.coords[:, 0])  # ctx.coords: the batch's own tiles
    np.testing.assert_array_equal(bag.features_5x[:, 4], bag.coords_5x[:, 0])
    assert bag.attrs["encoder"] == NAME and bag.attrs["encoder_config"]["scale"] == 2.0
    assert "block" not in bag.attrs and "missing_children_5x" not in bag.attrs  # no encoder-specific attrs leak

    # the same options from a YAML config (encoder: mapping); the command line wins over it
    cfg = tmp_path / "extract.yaml"
    cfg.write_text(f"encoder:\n  name: {NAME}\n  scale: 3\nmags: 20x\nworkers: 0\n")
    assert main(["extract", str(CMU), "--config", str(cfg), "--out", str(tmp_path / "yaml"), "--no-progress"]) == 0
    b3 = load_bag(bag_path(tmp_path / "yaml", NAME, "cmu_small_region"))
    assert b3.features_5x is None
    np.testing.assert_allclose(b3.features[:, :3], want20 / 2 * 3, atol=1e-5)
    assert main(["extract", str(CMU), "--config", str(cfg), "--scale", "1", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    np.testing.assert_allclose(load_bag(bag_path(tmp_path / "cli", NAME, "cmu_small_region")).features[:, :3],
                               want20 / 2, atol=1e-5)


def test_help_lists_it_and_unknown_names_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert NAME in help_text and f"{NAME} options" in help_text and "--scale" in help_text
    assert "multiply the mean colour by this (default: 1.0)" in " ".join(help_text.split())

    with pytest.raises(SystemExit):
        main(["extract", str(CMU), "--encoder", "resnet-9000", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'resnet-9000'" in err[-1]
    cfg = tmp_path / "extract.yaml"
    cfg.write_text("encoder:\n  name: resnet-9000\n")
    assert main(["extract", str(CMU), "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown encoder 'resnet-9000'; choose from" in err[0] and NAME in err[0]
    cfg.write_text(f"encoder:\n  name: {NAME}\n  blocks: [0]\n")  # another encoder's option
    assert main(["extract", str(CMU), "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert "unknown option(s) 'blocks'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_needs_weights_fails_before_any_slide_is_read(tmp_path, monkeypatch, capsys):
    import zoomfeat.extract as extract

    opened = []
    real = extract.open_slide
    monkeypatch.setattr(extract, "open_slide", lambda *a, **k: opened.append(a) or real(*a, **k))  # its reader
    empty = tmp_path / "registry.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("ZOOMFEAT_WEIGHTS_REGISTRY", str(empty))
    rc = main(["extract", str(CMU), "--encoder", "test-needs-weights", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no weights for encoder 'test-needs-weights'" in err[0]
    assert opened == [] and BUILT == [] and not (tmp_path / "never").exists()
    w = tmp_path / "w.bin"
    w.write_bytes(b"x")
    from zoomfeat.encoders import create_encoder

    enc = create_encoder("test-needs-weights", weights=w)
    assert enc.name == "test-needs-weights" and BUILT == [w]


def test_an_option_clashing_with_an_extract_flag_does_not_break_the_cli(capsys):
    """A registered encoder whose option has an extract flag's name warns; the CLI (every verb) still builds."""
    from zoomfeat.encoders import unregister_encoder

    @dataclass
    class ClashOptions(EncoderOptions):
        workers: int = option(3, "clashes with --workers")

    @register_encoder("test-clash", options=ClashOptions)
    class Clash(MeanRGB):
        pass

    try:
        with pytest.warns(UserWarning, match="'test-clash': option --workers clashes"):
            with pytest.raises(SystemExit) as exc:
                main(["extract", "--help"])
        assert exc.value.code == 0 and "test-clash" in capsys.readouterr().out
    finally:
        unregister_encoder("test-clash")
    with pytest.raises(ValueError, match="unknown encoder 'test-clash'"):
        from zoomfeat.encoders import create_encoder

        create_encoder("test-clash")


LAB_ENCODERS = ("from zoomfeat.encoders import TileEncoder, register_encoder, to_float_images\n\n\n"
                "@register_encoder('plugin-red')\nclass Red(TileEncoder):\n    '''Mean red of a tile.'''\n\n"
                "    dim = 1\n\n    def encode(self, images, ctx=None):\n"
                "        return to_float_images(images)[:, :1].mean(dim=(2, 3))\n")
PLUGIN_EXTRACT = ["extract", str(CMU), "--encoder", "plugin-red", "--out", "OUT", "--mags", "20x", "--workers", "0",
                  "--no-progress"]


def _check_plugin_module(tmp_path, run) -> None:
    """``run(args, env)`` runs `python -m zoomfeat ARGS` in a new process whose import path holds ``tmp_path``."""
    (tmp_path / "lab_encoders.py").write_text(LAB_ENCODERS)
    out = tmp_path / "out"
    ok = run([str(out) if a == "OUT" else a for a in PLUGIN_EXTRACT], {"ZOOMFEAT_PLUGINS": "lab_encoders"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bag = load_bag(bag_path(out, "plugin-red", "cmu_small_region"))
    assert bag.features.shape[1] == 1 and 0 < float(bag.features.mean()) < 1
    bad = run(["extract", "--help"], {"ZOOMFEAT_PLUGINS": "no_such_module_xyz"})
    assert bad.returncode == 2 and "no_such_module_xyz" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
def test_plugin_module_adds_an_encoder_to_the_zoomfeat_command(tmp_path):
    """A user's module named in $ZOOMFEAT_PLUGINS registers its encoder before the `zoomfeat` command builds its
    parser: `python -m zoomfeat extract --encoder plugin-red` works in a fresh process (entry points work the same).
    Slow form (a new interpreter per run); the default suite runs the same checks in a forked child that imports
    zoomfeat afresh: test_plugin_module_adds_an_encoder_to_the_zoomfeat_command_fast."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    _check_plugin_module(tmp_path, lambda args, extra: subprocess.run(
        [sys.executable, "-m", "zoomfeat", *args], env={**env, **extra}, capture_output=True, text=True, timeout=300))


def test_plugin_module_adds_an_encoder_to_the_zoomfeat_command_fast(tmp_path):
    """Fast twin of the test above: each run is a forked child that drops every zoomfeat module and imports the
    toolkit again (a new registry, plugins not yet loaded), with torch & co. already in memory."""
    _check_plugin_module(tmp_path, lambda args, extra: run_forked(
        zoomfeat_main(args), tmp_path / "_fork", {"WANDB_MODE": "disabled", **extra}, path=[str(tmp_path)],
        fresh=True))


def _verbs_with_flags(parser, path=()):
    """(verb path, option strings) of every parser and sub-parser of the `zoomfeat` command."""
    import argparse

    flags = {o for a in parser._actions for o in a.option_strings}
    yield path, flags
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _verbs_with_flags(sub, (*path, name))


def test_every_verb_that_takes_weights_offers_weights_registry():
    """Issue 26.5: a verb that takes encoder weights (--weights / --ssl-weights / --encoder-weights) also takes the
    user's registry file, under the one name --weights-registry."""
    from zoomfeat.cli import build_parser

    weights_flags = {"--weights", "--ssl-weights", "--encoder-weights"}
    takers = {" ".join(path): flags for path, flags in _verbs_with_flags(build_parser()) if flags & weights_flags}
    assert {"extract", "predict", "generate", "build-dataset", "probe"} <= set(takers)
    missing = sorted(v for v, flags in takers.items() if "--weights-registry" not in flags)
    assert not missing, f"verbs taking weights without --weights-registry: {missing}"


def test_user_weights_registry_paths_resolve_beside_the_file(tmp_path, monkeypatch):
    """$ZOOMFEAT_WEIGHTS_REGISTRY / --weights-registry name the user's file; its relative paths resolve beside that
    file (not in the package, not in the working directory); the packaged file is only an example."""
    from zoomfeat.encoders import DEFAULT_REGISTRY, load_weights_registry, resolve_weights

    user = tmp_path / "lab" / "weights.yaml"
    (user.parent / "w").mkdir(parents=True)
    (user.parent / "w" / "uni.bin").write_bytes(b"x")
    user.write_text("uni: w/uni.bin\nphikon: w/missing\n")
    monkeypatch.chdir(tmp_path)  # a different folder than the registry's
    monkeypatch.setenv("ZOOMFEAT_WEIGHTS_REGISTRY", str(user))
    assert resolve_weights("uni") == user.parent / "w" / "uni.bin"
    assert "EXAMPLE" in DEFAULT_REGISTRY.read_text().splitlines()[0]
    assert all(v is None for v in __import__("yaml").safe_load(DEFAULT_REGISTRY.read_text()).values())
    monkeypatch.delenv("ZOOMFEAT_WEIGHTS_REGISTRY")
    assert load_weights_registry() == {}  # the packaged example maps nothing
    with pytest.raises(FileNotFoundError, match="copy of the example") as err:
        resolve_weights("uni")
    assert "ZOOMFEAT_WEIGHTS_REGISTRY" in str(err.value)


def test_cli_weights_registry_flag_reaches_the_encoder(tmp_path, monkeypatch, capsys):
    """`zoomfeat extract --weights-registry USER.yaml`: the registry's relative path is resolved beside the file and
    checked before any slide is read (exit 2, one line naming that path)."""
    monkeypatch.delenv("ZOOMFEAT_WEIGHTS_REGISTRY", raising=False)
    user = tmp_path / "lab" / "weights.yaml"
    user.parent.mkdir()
    user.write_text("uni: w/uni_missing.bin\n")
    monkeypatch.chdir(tmp_path)
    rc = main(["extract", str(CMU), "--encoder", "uni", "--weights-registry", str(user), "--out", str(tmp_path / "o"),
               "--mags", "20x", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(user.parent / "w" / "uni_missing.bin") in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.h5"))


LAZY_PLUGIN = ("import os\nopen(os.environ['MARK'], 'a').write('x')\n"
               "from zoomfeat.encoders import TileEncoder, register_encoder\n\n\n"
               "@register_encoder('lazy-plugin')\nclass Lazy(TileEncoder):\n    '''A plugin.'''\n\n    dim = 1\n")
LAZY_CODE = ("import os, zoomfeat.encoders as e\n"
             "assert not os.path.exists(os.environ['MARK']), 'plugin imported at import time'\n"
             "assert 'lazy-plugin' in e.encoder_entries()\n"
             "e.get_encoder('lazy-plugin'); e.encoder_entries()\n"
             "import warnings\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    warnings.simplefilter('always')\n"
             "    assert e.Encoder is e.ModelEncoder and w and w[0].category is DeprecationWarning\n"
             "print(open(os.environ['MARK']).read())\n")


def _check_lazy_plugins(tmp_path, run_code, run_cli) -> None:
    """``run_code(code, env)``: `python -c CODE`, ``run_cli(args, env)``: `python -m zoomfeat ARGS`, each in a new
    process whose import path holds ``tmp_path``."""
    (tmp_path / "lazy_plugin.py").write_text(LAZY_PLUGIN)
    env = {"ZOOMFEAT_PLUGINS": "lazy_plugin", "MARK": str(tmp_path / "mark"), "OMP_NUM_THREADS": "1"}
    run = run_code(LAZY_CODE, env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "x"  # imported exactly once
    # a broken plugin met first in a verb's handler (`zoomfeat encoders` looks the registry up there): one line, exit 2
    bad = run_cli(["encoders"], {**env, "ZOOMFEAT_PLUGINS": "no_such_module_xyz"})
    assert bad.returncode == 2 and "no_such_module_xyz" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
def test_plugins_load_on_first_registry_lookup(tmp_path):
    """Issue 26.4: importing zoomfeat.encoders scans no plugins; the first registry lookup does, once. Slow form (a
    new interpreter per run); the default suite runs the same checks in forked children that import zoomfeat afresh:
    test_plugins_load_on_first_registry_lookup_fast."""
    import os
    import subprocess
    import sys

    base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def sub(cmd, env):
        return subprocess.run([sys.executable, *cmd], env={**base, **env}, capture_output=True, text=True, timeout=300)

    _check_lazy_plugins(tmp_path, lambda code, env: sub(["-c", code], env),
                        lambda args, env: sub(["-m", "zoomfeat", *args], env))


def test_plugins_load_on_first_registry_lookup_fast(tmp_path):
    """Fast twin of the test above: each run is a forked child that drops every zoomfeat module first, so
    `import zoomfeat.encoders` really imports it again (and with it a registry whose plugins are not loaded)."""

    def code_runner(code):
        return lambda: exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})

    _check_lazy_plugins(
        tmp_path,
        lambda code, env: run_forked(code_runner(code), tmp_path / "_fork", env, path=[str(tmp_path)], fresh=True),
        lambda args, env: run_forked(zoomfeat_main(args), tmp_path / "_fork", env, path=[str(tmp_path)], fresh=True))
