"""The probe's options (torch-free, so `zoomfeat probe --help` builds its flags from them without torch):
:class:`SweepSpec`, what to sweep and how to score it, and :class:`ProbeConfig`, everything `zoomfeat probe` takes
besides the slides (the spec's fields plus where the inputs are and where the run goes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MAGS = ("20x", "5x", "20x+5x")


def _opt(default=dataclasses.MISSING, factory=dataclasses.MISSING, **meta):
    """A field with CLI metadata (help, flag, …: :func:`zoomfeat.cli.options.add_fields`)."""
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class SweepSpec:
    """What to sweep and how to score it (defaults: the issue's full grid, 3 × 5-fold)."""

    blocks: list[int] = _opt(factory=lambda: list(range(13)), help="UNet blocks")
    t: list[int] = _opt(factory=lambda: [0, 25, 50, 100, 200, 400], help="timesteps")
    conditioning: list[str] = _opt(factory=lambda: ["none", "uni"], help="none,uni")
    mags: list[str] = _opt(factory=lambda: list(MAGS), help="20x,5x,20x+5x")
    tasks: list[str] = _opt(factory=lambda: ["subtype"], help="label columns, 'survival' for time/event")
    baselines: list[str] = _opt(factory=list, help="reference encoders, comma-separated (any registered encoder but "
                                                   "ZoomLDM; `zoomfeat extract --help` lists them)")
    tiles_per_slide: int = _opt(64, help="20x tiles (and 5x regions) per slide")
    n_folds: int = _opt(5, flag=("--n-folds", "--folds"), help="folds of the stratified group k-fold")
    n_repeats: int = _opt(3, flag=("--n-repeats", "--repeats"), help="repeats of the k-fold")
    tune_fraction: float = _opt(0.0, help="share of patients held out to choose the recipe (1/k of a stratified "
                                          "group k-fold, k = round(1/F)); the rest only report it (0: choose and "
                                          "report on all)")
    select_task: str | None = _opt(None, flag=("--select-task", "--select"),
                                   help="task that chooses the recipe (default: the first task)")
    ssl_encoder: str = _opt("uni", help="SSL encoder of uni conditioning (tiny-vit for tiny models)")
    seed: int = _opt(0, help="seed of the tile choice, the noise and the splits")
    batch_size: int = _opt(32, help="tiles per forward")

    def __post_init__(self) -> None:
        bad = [m for m in self.mags if m not in MAGS]
        if bad:
            raise ValueError(f"mags must be among {', '.join(MAGS)}, got {bad}")
        bad = [c for c in self.conditioning if c not in ("none", "uni")]
        if bad:
            raise ValueError(f"conditioning must be 'none' and/or 'uni', got {bad}")
        if not 0.0 <= self.tune_fraction < 0.9:
            raise ValueError("tune_fraction must be in [0, 0.9)")
        self.select_task = self.select_task or self.tasks[0]
        if self.select_task not in self.tasks:
            raise ValueError(f"select task {self.select_task!r} is not among the tasks {self.tasks}")


@dataclass
class ProbeConfig(SweepSpec):
    """Everything `zoomfeat probe` takes besides the slides: the sweep (:class:`SweepSpec`'s fields) and its
    inputs, model and output folder. :func:`zoomfeat.probe.run_probe` runs it."""

    tiles: str | None = _opt(None, help="folder written by `zoomfeat tile` (20x + 5x coordinates); required")
    labels: str | None = _opt(None, help="CSV with slide, patient and one column per task (survival: time, event); "
                                         "required")
    out: str | None = _opt(None, help="output folder; required")
    weights: str | None = _opt(None, help="ZoomLDM folder (convert / train) or official weights.ckpt; required")
    official_config: str | None = _opt(None, help="official config.yaml of a .ckpt (default: the config.yaml "
                                                   "beside it)")
    ema: bool = _opt(True, flag="--online", help="official .ckpt only: load the online UNet instead of the EMA "
                                                 "weights (the released default)")
    encoder: str | None = _opt(None, help="the model whose recipe is swept (only ZoomLDM: zoomldm)")
    custom_model: str | None = _opt(None, help="'package.module:factory' for the custom baseline")
    ssl_weights: str | None = _opt(None, help="weights of the SSL encoder (default: registry)")
    weights_registry: str | None = _opt(None, metavar="YAML", help="encoder → weights registry YAML (default: "
                                                                   "$ZOOMFEAT_WEIGHTS_REGISTRY)")
    device: str = _opt("cpu", help="cpu, cuda, cuda:1 or auto (this rank's GPU if any)")
    progress: bool = _opt(True, flag="--no-progress", help="no progress bars")

    def sweep_spec(self) -> SweepSpec:
        """The sweep's own settings (what its cache and ``probe_summary.json`` record)."""
        return SweepSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SweepSpec)})
