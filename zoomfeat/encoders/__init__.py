"""Tile encoders behind one registry: ``create_encoder(name, weights=None, **kw)``, with weights from a local registry.

Every encoder follows one protocol (:class:`TileEncoder`: ``encode(images, ctx)`` with a :class:`TileContext`;
:class:`ModelEncoder` is the concrete one wrapping an ``nn.Module`` plus transforms) and registers itself with
``@register_encoder`` (see :mod:`zoomfeat.encoders.registry`). Built-ins: ``zoomldm``, the TRIDENT-parity
baselines of :mod:`zoomfeat.encoders.baselines` (``uni_v1`` = ``uni``, ``uni_v2``, ``phikon``, ``phikon_v2``,
``ctranspath``, ``virchow2``, ``hoptimus0``, ``hoptimus1``, ``gigapath``, ``resnet50``, ``conch_v15``),
``tiny-vit``, ``custom``; plugins are imported on the first registry lookup. Weights are local files only (never a
hub download): the user's weights registry YAML (``$ZOOMFEAT_WEIGHTS_REGISTRY`` or ``--weights-registry``) maps
encoder name → path, relative paths resolving beside that file.
"""

from __future__ import annotations

from zoomfeat.encoders.base import ModelEncoder, TileContext, TileEncoder, TileTransform, to_float_images
from zoomfeat.encoders.options import EncoderOptions, RandomInitOptions, int_list, option
from zoomfeat.encoders.registry import (DEFAULT_REGISTRY, EncoderEntry, build_from_options, create_encoder,
                                        encoder_entries, get_encoder, load_plugins, load_weights_registry,
                                        register_encoder, resolve_weights, unregister_encoder)

# the built-ins register themselves on import (torch is imported, no weights are loaded); order = --help order
from zoomfeat.encoders import zoomldm, baselines, uni, phikon, tiny, custom  # noqa: E402,F401  isort: skip

__all__ = ["ModelEncoder", "TileContext", "TileEncoder", "TileTransform", "to_float_images", "EncoderOptions",
           "RandomInitOptions", "int_list", "option", "DEFAULT_REGISTRY", "EncoderEntry", "build_from_options",
           "create_encoder", "encoder_entries", "get_encoder", "load_plugins", "load_weights_registry",
           "register_encoder", "resolve_weights", "unregister_encoder"]

# third-party encoders (entry points of group zoomfeat.encoders and $ZOOMFEAT_PLUGINS) are loaded on the first
# registry lookup, not here: see zoomfeat.encoders.registry.load_plugins


def __getattr__(name: str):
    """``Encoder``: the deprecated name of :class:`ModelEncoder` (kept so existing plugins keep working)."""
    if name == "Encoder":
        import warnings

        warnings.warn("zoomfeat.encoders.Encoder is deprecated; use ModelEncoder", DeprecationWarning, stacklevel=2)
        return ModelEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
