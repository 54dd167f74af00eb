"""zoomfeat: ZoomLDM multi-scale diffusion features, generation and MIL benchmarking for pathology."""

__version__ = "0.1.0"

__all__ = ["__version__"]
