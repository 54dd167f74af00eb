"""Training ZoomLDM on a user's cohort: the options (:mod:`.config`), the multi-scale training set (built by
:mod:`.shards`, read by :mod:`.dataset`) and the loop (:mod:`.loop`)."""

import importlib

#: public name → its module; imported on first use (the CLI reads config defaults at start-up without numpy, and
#: the loop imports accelerate/diffusers)
_EXPORTS = {
    "BuildReport": "shards",
    "build_dataset": "shards",
    "DatasetError": "dataset",
    "MultiScaleLatentDataset": "dataset",
    "StepBatchSampler": "dataset",
    "TrainConfig": "config",
    "load_train_config": "config",
    "train": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"zoomfeat.train.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
