"""Image generation with ZoomLDM: patches, joint multi-scale large images and condition-inversion super-resolution.

Modules (imported on demand so that ``import zoomfeat.generate`` stays light):

* :mod:`zoomfeat.generate.patches` — CFG patch sampling for an SSL grid at a magnification;
* :mod:`zoomfeat.generate.large` — joint multi-scale sampling of N×N 20x patches guided by a jointly sampled
  low-magnification image, with the backprop-free (or autograd) constraint update, Gaussian-blended tiled
  decoding and the sliding-window refinement pass;
* :mod:`zoomfeat.generate.superres` — infer the 20x SSL tokens of a low-magnification image, then sample
  20x patches constrained to it;
* :mod:`zoomfeat.generate.resize` — the MATLAB-style antialiased bicubic resizer the constraints use.
"""
