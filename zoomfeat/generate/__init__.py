"""Image generation with ZoomLDM: patches, joint multi-scale large images and condition-inversion super-resolution.

* :mod:`zoomfeat.generate.patches` — CFG patch sampling for an SSL grid at a magnification;
* :mod:`zoomfeat.generate.large` — joint multi-scale sampling of N×N 20x patches guided by a jointly sampled
  low-magnification image, with the backprop-free (or autograd) constraint update, Gaussian-blended tiled
  decoding and the sliding-window refinement pass;
* :mod:`zoomfeat.generate.superres` — infer the 20x SSL tokens of a low-magnification image, then sample
  20x patches constrained to it;
* :mod:`zoomfeat.generate.resize` — the MATLAB-style antialiased bicubic resizer the constraints use;
* :mod:`zoomfeat.generate.realism` — real-vs-generated tile statistics of a trained model.

Public names are resolved on first use (PEP 562), so that importing one module (e.g. the resizer) does not import
the others (the realism report reads slides and encoders).
"""

from zoomfeat.exports import lazy_getattr

#: public name → its module
_EXPORTS = {
    "generate_patches": "patches", "load_ssl_grid": "patches", "save_image_grid": "patches",
    "LargeImageConfig": "large", "LargeImage": "large", "sample_large_image": "large",
    "SuperResConfig": "superres", "SuperRes": "superres", "super_resolve": "superres",
    "imresize": "resize", "Resizer": "resize",
    "realism_report": "realism",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
