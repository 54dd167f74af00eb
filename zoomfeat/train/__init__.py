"""Training ZoomLDM on a user's cohort: the multi-scale training set (:mod:`.dataset`) and the loop (:mod:`.loop`)."""

from zoomfeat.train.dataset import (
    BuildReport,
    DatasetError,
    MultiScaleLatentDataset,
    StepBatchSampler,
    build_dataset,
)

__all__ = [
    "BuildReport",
    "DatasetError",
    "MultiScaleLatentDataset",
    "StepBatchSampler",
    "build_dataset",
    "train",
    "load_train_config",
]


def __getattr__(name):  # the loop imports accelerate/diffusers: load it on first use only
    if name in ("train", "load_train_config"):
        from zoomfeat.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
