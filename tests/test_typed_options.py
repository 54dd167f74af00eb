"""Issue 26, item 1: each verb's options are one typed object from the command line to the API. The flags are
generated from the options dataclass (no argparse default restates a dataclass default), and a misspelt key in a
``--config`` YAML or a ``--set key=value`` override exits 2 with one line naming the key and the nearest valid one."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from zoomfeat.cli import build_parser, main

#: verb → (the arguments it needs to reach its options loader, the YAML with a misspelt key, the --set override,
#: the misspelt key and the key it should suggest). Every loader runs before any slide, model or file is read.
CASES = {
    "extract": (["extract", "{slides}", "--out", "{out}", "--encoder", "tiny-vit"], "bach_size: 4\n",
                "bach_size=4", "bach_size", "batch_size"),
    "train": (["train", "--out", "{out}"], "train:\n  bach_size: 4\n", "train.bach_size=4", "bach_size",
              "batch_size"),
    "build-dataset": (["build-dataset", "{slides}", "--out", "{out}", "--ssl-encoder", "tiny-vit"],
                      "pool_too: 4\n", "pool_too=4", "pool_too", "pool_to"),
    "probe": (["probe", "{slides}", "--out", "{out}"], "tiles_per_slid: 4\n", "tiles_per_slid=4", "tiles_per_slid",
              "tiles_per_slide"),
    "predict": (["predict", "{slides}", "--out", "{out}"], "nboot: 10\n", "nboot=10", "nboot", "n_boot"),
    "generate-large": (["generate-large", "--out", "{out}"], "sampling:\n  n_step: 2\n", "sampling.n_step=2",
                       "n_step", "n_steps"),
    "generate": (["generate", "--out", "{out}"], "stepps: 2\n", "stepps=2", "stepps", "steps"),
    "superres": (["superres", "--out", "{out}"], "superres:\n  itters: 2\n", "superres.itters=2", "itters",
                 "iters"),
    "tile": (["tile", "{slides}", "--out", "{out}"], "min_tisue: 0.3\n", "min_tisue=0.3", "min_tisue",
             "min_tissue"),
}


def _args(template: list[str], tmp_path) -> list[str]:
    (tmp_path / "slides").mkdir(exist_ok=True)
    paths = {"{slides}": str(tmp_path / "slides"), "{out}": str(tmp_path / "out")}
    return [paths.get(a, a) for a in template]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("verb", sorted(CASES))
def test_misspelt_key_in_yaml_or_set_names_it_and_the_nearest(verb, tmp_path, capsys):
    template, yaml_text, override, bad, near = CASES[verb]
    args = _args(template, tmp_path)
    cfg = tmp_path / "opts.yaml"
    cfg.write_text(yaml_text)
    assert main([*args, "--config", str(cfg)]) == 2
    err = _one_line(capsys)
    assert f"zoomfeat {verb}: error:" in err and "opts.yaml" in err, err
    assert f"unknown option(s) '{bad}' (did you mean '{near}'?)" in err, err
    base = ["--config", "configs/train/tiny.yaml"] if verb == "train" else []  # train's --config is required
    assert main([*args, *base, "--set", override]) == 2
    err = _one_line(capsys)
    assert f"unknown option(s) '{bad}' (did you mean '{near}'?)" in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_unknown_key_far_from_every_option_lists_the_known_ones():
    from zoomfeat.config import from_dict
    from zoomfeat.probe_spec import SweepSpec

    with pytest.raises(ValueError) as ei:
        from_dict(SweepSpec, {"zzzz": 1, "n_fold": 3}, "probe.yaml")
    msg = str(ei.value)
    assert msg.startswith("probe.yaml: unknown option(s) 'n_fold' (did you mean 'n_folds'?), 'zzzz'; known: ")
    assert "tiles_per_slide" in msg


# the options objects of the verbs whose flags are generated (issue 26 item 1; mil's verbs are done apart)
def _schemas() -> dict:
    from zoomfeat.extract import ExtractConfig
    from zoomfeat.generate.options import GenerateLargeConfig, PatchSamplingConfig, SuperResRunConfig
    from zoomfeat.predict import PredictConfig
    from zoomfeat.probe_spec import ProbeConfig
    from zoomfeat.slides.tiling import TilingConfig
    from zoomfeat.train.config import BuildDatasetConfig

    return {"extract": ExtractConfig, "probe": ProbeConfig, "predict": PredictConfig, "tile": TilingConfig,
            "build-dataset": BuildDatasetConfig, "generate-large": GenerateLargeConfig, "superres": SuperResRunConfig,
            "generate": PatchSamplingConfig, "train": None}


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_no_argparse_default_restates_a_dataclass_default():
    """Every option of these verbs defaults to None / False (= not given) or is argparse's own; the defaults shown
    in --help are the dataclass's, so changing a dataclass default changes the command line's."""
    verbs = _verbs(build_parser())
    offenders = []
    for verb in _schemas():
        for action in verbs[verb]._actions:
            if action.default not in (None, False, argparse.SUPPRESS):
                offenders.append(f"{verb} {'/'.join(action.option_strings) or action.dest} = {action.default!r}")
    assert not offenders, "argparse defaults that restate a default:\n" + "\n".join(offenders)


def _leaves(schema: type, prefix: str = "") -> list[str]:
    from zoomfeat.config import field_types, nested_schema

    out = []
    for name, tp in field_types(schema).items():
        sub = nested_schema(tp)
        out += _leaves(sub, f"{prefix}{name}.") if sub is not None else [prefix + name]
    return out


@pytest.mark.parametrize("verb", ["extract", "probe", "predict", "tile", "build-dataset", "generate-large",
                                  "superres", "generate"])
def test_every_field_is_a_flag_whose_help_shows_the_dataclass_default(verb):
    from zoomfeat.cli.options import field_default

    schema = _schemas()[verb]
    parser = _verbs(build_parser())[verb]
    dests = {a.dest: a for a in parser._actions}
    missing = [f for f in _leaves(schema) if f not in dests and f != "encoder"]  # extract: --encoder + its group
    assert not missing, f"{verb}: fields without a flag: {missing}"
    for f in dataclasses.fields(schema):
        default = field_default(schema, f.name)
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and f.name in dests:
            assert f"(default: {default})" in dests[f.name].help, (verb, f.name, dests[f.name].help)


def test_flags_reach_the_options_object_and_old_spellings_still_work(tmp_path):
    """The probe's renamed-looking flags are the fields' own names, the old spellings (--folds, --repeats,
    --select) stay; the command line wins over --set, which wins over --config."""
    from zoomfeat.cli.options import options_from_args
    from zoomfeat.probe_spec import ProbeConfig

    cfg = tmp_path / "probe.yaml"
    cfg.write_text("n_folds: 4\nseed: 3\ntasks: [a, b]\n")
    parser = build_parser("probe")
    args = parser.parse_args(["probe", "S", "--config", str(cfg), "--set", "seed=5", "--set", "batch_size=8",
                              "--folds", "2", "--repeats", "1", "--select", "b", "--blocks", "0,2", "--online"])
    opts = options_from_args(ProbeConfig, args)
    assert (opts.n_folds, opts.n_repeats, opts.select_task, opts.blocks) == (2, 1, "b", [0, 2])
    assert (opts.seed, opts.batch_size, opts.tasks, opts.ema) == (5, 8, ["a", "b"], False)
    spec = opts.sweep_spec()
    assert type(spec).__name__ == "SweepSpec" and spec.n_folds == 2 and not hasattr(spec, "tiles")
    new = options_from_args(ProbeConfig, parser.parse_args(["probe", "S", "--n-folds", "2", "--select-task", "b",
                                                            "--tasks", "a,b", "--n-repeats", "1"]))
    assert (new.n_folds, new.n_repeats, new.select_task) == (2, 1, "b")


def test_nested_options_keep_their_parents_defaults():
    """superres's sampling defaults to 5 constraint steps (generate-large's to 10); a flag sets only its field."""
    from zoomfeat.cli.options import options_from_args
    from zoomfeat.generate.options import GenerateLargeConfig, SuperResRunConfig

    parser = build_parser("superres")
    sr = options_from_args(SuperResRunConfig, parser.parse_args(["superres", "--lr", "0.25", "--scale", "2"]))
    assert (sr.superres.sampling.n_steps, sr.superres.sampling.lr, sr.superres.scale) == (5, 0.25, 2)
    help = _verbs(parser)["superres"].format_help()
    assert "(default: 5)" in help.split("  --n-steps N_STEPS")[-1].split("--lr")[0], help
    gl = options_from_args(GenerateLargeConfig, parser.parse_args(["generate-large", "--refine", "--t0", "500"]))
    assert (gl.sampling.n_steps, gl.sampling.refine, gl.sampling.t0) == (10, True, 500)
