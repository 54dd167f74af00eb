"""Training ZoomLDM on a user's cohort: the options (:mod:`.config`), the multi-scale training set (built by
:mod:`.shards`, read by :mod:`.dataset`) and the loop (:mod:`.loop`)."""

from zoomfeat.exports import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
