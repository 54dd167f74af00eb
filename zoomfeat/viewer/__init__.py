"""Look at MIL results: a local web viewer (``zoomfeat view``) and a QuPath GeoJSON export (``zoomfeat export-qupath``).

``Results(run_dir)`` reads a ``mil cv`` / ``compare`` output folder; ``Site`` turns it into pages, Deep Zoom tiles
(``openslide.deepzoom``) and overlay images; ``serve`` / ``export_site`` publish them; ``export_qupath`` writes
one FeatureCollection per slide.
"""

from __future__ import annotations

from zoomfeat.viewer.qupath import check_feature_collection, export_qupath
from zoomfeat.viewer.results import Attention, Results, Run, discover_runs
from zoomfeat.viewer.server import export_site, make_server, serve, serve_in_thread
from zoomfeat.viewer.site import Site

__all__ = ["Attention", "Results", "Run", "Site", "check_feature_collection", "discover_runs", "export_qupath",
           "export_site", "make_server", "serve", "serve_in_thread"]
