"""TRIDENT-parity baseline tile encoders, one module each, built locally from a weights file the user gives.

Every encoder here reproduces TRIDENT's (mahmoodlab/TRIDENT a91fa84) architecture call, eval transform (PIL resize
/ crop, bit-identical), output rule and default precision; ``tests/test_encoder_parity.py`` checks each against
features TRIDENT computed (``docs/encoders.md``). Shared pieces: :mod:`zoomfeat.encoders.baselines.common`.
"""

from __future__ import annotations

# registration order = listing order
from zoomfeat.encoders.baselines import (uni_v1, uni_v2, phikon, phikon_v2, ctranspath, virchow2,  # noqa: F401
                                         hoptimus0, hoptimus1, gigapath, resnet50, conch_v15)
from zoomfeat.encoders.baselines.common import BaselineSpec, full_size_listing

#: Every baseline's spec by encoder name (the ``uni`` alias builds ``uni_v1``'s).
SPECS: dict[str, BaselineSpec] = {m.SPEC.name: m.SPEC for m in (uni_v1, uni_v2, phikon, phikon_v2, ctranspath,
                                                                 virchow2, hoptimus0, hoptimus1, gigapath,
                                                                 resnet50, conch_v15)}
SPECS["uni"] = uni_v1.SPEC

__all__ = ["SPECS", "BaselineSpec", "full_size_listing"]
