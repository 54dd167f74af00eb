"""Training ZoomLDM on a user's cohort: the options (:mod:`.config`), the multi-scale training set (built by
:mod:`.shards`, read by :mod:`.dataset`) and the loop (:mod:`.loop`)."""

from zoomfeat.train.config import TrainConfig, load_train_config
from zoomfeat.train.dataset import DatasetError, MultiScaleLatentDataset, StepBatchSampler
from zoomfeat.train.shards import BuildReport, build_dataset

__all__ = [
    "BuildReport",
    "DatasetError",
    "MultiScaleLatentDataset",
    "StepBatchSampler",
    "TrainConfig",
    "build_dataset",
    "train",
    "load_train_config",
]


def __getattr__(name):  # the loop imports accelerate/diffusers: load it on first use only
    if name == "train":
        from zoomfeat.train import loop

        return loop.train
    raise AttributeError(name)
