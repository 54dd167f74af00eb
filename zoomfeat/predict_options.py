"""The options of ``zoomfeat predict`` (:func:`zoomfeat.predict.predict_slides`): torch-free, so the CLI builds the
verb's flags from these fields without importing the model stack."""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default=None, **meta):
    return field(default=default, metadata=meta)


@dataclass
class PredictConfig:
    """Everything ``zoomfeat predict`` takes besides the slides (one object from the command line to
    :func:`predict_slides`; the CLI's flags are generated from these fields)."""

    model: str | None = _opt(help="model folder (`zoomfeat mil train`) or `mil cv` folder (ensemble); required")
    out: str | None = _opt(help="output folder; required")
    labels: str | None = _opt(help="labels CSV: external-validation metrics with bootstrap CIs")
    weights: str | None = _opt(help="encoder weights (default: from the registry); hash-checked")
    official_config: str | None = _opt(help="zoomldm given as an official .ckpt: its config.yaml (default: the "
                                            "config.yaml beside it)")
    ssl_weights: str | None = _opt(help="zoomldm: weights of the conditioning SSL encoder")
    weights_registry: str | None = _opt(metavar="YAML", help="your YAML encoder → local weights path registry")
    tiles: str | None = _opt(help="reuse a `zoomfeat tile` folder (default: tile into OUT/tiles)")
    mpp: float | None = _opt(help="force the level-0 µm/px of every slide")
    mpp_csv: str | None = _opt(help="CSV slide,mpp overriding slide metadata")
    min_tissue: float | None = _opt(help="minimum tissue fraction per 20x tile")
    heatmaps: int | None = _opt(help="heatmap PNGs to draw (default: every slide)")
    n_boot: int = _opt(1000, help="bootstrap draws for the CIs")
    seed: int = _opt(0, help="seed of the bootstrap")
    batch_size: int = _opt(16, help="tiles per forward")
    workers: int = _opt(0, help="DataLoader workers for extraction")
    device: str = _opt("auto", help="auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1 …")
    progress: bool = _opt(True, flag="--no-progress", help="no progress bars")
