"""ZoomLDM on diffusers: the model (:class:`ZoomLDM`), its Summarizer, schedulers and official-checkpoint loading."""

from zoomfeat.ldm.modules import build_modules
from zoomfeat.ldm.pipeline import FeatureBlock, ZoomLDM
from zoomfeat.ldm.summarizer import Summarizer, pool_and_normalize

__all__ = ["ZoomLDM", "Summarizer", "FeatureBlock", "build_modules", "pool_and_normalize"]
