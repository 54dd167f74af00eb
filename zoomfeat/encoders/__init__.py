"""Tile encoders behind one registry: ``create_encoder(name, weights=None, **kw)``, with weights from a local registry.

Every encoder follows one protocol (:class:`TileEncoder`: ``encode(images, ctx)`` with a :class:`TileContext`) and
registers itself with ``@register_encoder`` (see :mod:`zoomfeat.encoders.registry`). Built-ins: ``zoomldm``, the
TRIDENT-parity baselines of :mod:`zoomfeat.encoders.baselines` (``uni_v1`` = ``uni``, ``uni_v2``, ``phikon``,
``phikon_v2``, ``ctranspath``, ``virchow2``, ``hoptimus0``, ``hoptimus1``, ``gigapath``, ``resnet50``,
``conch_v15``), ``tiny-vit``, ``custom``. Weights are local files only (never a hub download);
``configs/encoders/weights.yaml`` maps encoder name → path and is overridable per call / on the CLI.
"""

from __future__ import annotations

from zoomfeat.encoders.base import (Encoder, TileContext, TileEncoder, TileTransform,  # noqa: F401
                                    to_float_images)
from zoomfeat.encoders.options import EncoderOptions, RandomInitOptions, int_list, option  # noqa: F401
from zoomfeat.encoders.registry import (DEFAULT_REGISTRY, EncoderEntry, build_from_options,  # noqa: F401
                                        create_encoder, encoder_entries, get_encoder, load_weights_registry,
                                        load_plugins, register_encoder, resolve_weights,
                                        unregister_encoder)

# the built-ins register themselves on import (torch is imported, no weights are loaded); order = --help order
from zoomfeat.encoders import zoomldm, baselines, uni, phikon, tiny, custom  # noqa: E402,F401  isort: skip

load_plugins()  # third-party encoders: entry points of group zoomfeat.encoders and $ZOOMFEAT_PLUGINS
