"""`zoomfeat view` (local web viewer of MIL results) and `zoomfeat export-qupath` (GeoJSON per slide)."""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of `zoomfeat mil cv` or `zoomfeat compare` "
                                                      "(or a folder holding several)")
    p.add_argument("--slides", default=None, help="folder of the WSIs (default: the labels CSV 'path' column, "
                                                  "then the path recorded by `zoomfeat tile`)")
    p.add_argument("--tiles", default=None, help="`zoomfeat tile` output (default: the one the bags were made from)")


def register(subparsers) -> None:
    v = subparsers.add_parser(
        "view", help="web viewer of MIL results: slides, deep zoom, attention heatmaps (127.0.0.1 only)",
        description="Serve an index of every slide (labels, out-of-fold predictions, fold, right/wrong), slide "
                    "pages with an OpenSeadragon deep-zoom view and toggleable overlays (tissue, 20x tiles, 5x "
                    "regions, attention of each run), galleries of the most / least attended tiles, the "
                    "comparison tables and generated patches. With --export, write the same pages as static files.")
    _common(v)
    v.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    v.add_argument("--generated", default=None, help="folder with `zoomfeat generate` outputs (default: searched "
                                                     "next to RUN_DIR)")
    v.add_argument("--export", default=None, metavar="SITE", help="write a static site to SITE instead of serving")
    v.add_argument("--max-side", type=int, default=8192,
                   help="--export: deep zoom tiles up to the level whose larger side is at most this many px")
    v.set_defaults(func=_view)

    q = subparsers.add_parser(
        "export-qupath", help="one QuPath GeoJSON per slide: attended tiles (score, rank, class) + tissue",
        description="Write {out}/{slide}.geojson: a FeatureCollection of tile polygons (level-0 px) with "
                    "measurements = attention score and rank of every run, classification = predicted class, "
                    "plus the tissue polygons. Drag the file onto the slide open in QuPath.")
    _common(q)
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--run", default=None, help="run whose predicted class classifies the tiles "
                                               "(default: the first classification run)")
    q.set_defaults(func=_qupath)


def _view(args: argparse.Namespace) -> int:
    from zoomfeat.viewer import Results, export_site, serve

    res = Results(args.run_dir, slides=args.slides, tiles=args.tiles, generated=args.generated)
    if args.export:
        index = export_site(res, args.export, max_side=args.max_side)
        print(f"wrote {index} ({len(res.slide_ids)} slides, {len(res.runs)} runs); open it in a browser")
        return 0
    serve(res, port=args.port)
    return 0


def _qupath(args: argparse.Namespace) -> int:
    from zoomfeat.viewer import Results, export_qupath

    res = Results(args.run_dir, slides=args.slides, tiles=args.tiles)
    done = export_qupath(res, args.out, run=args.run)
    bad = {s: r for s, r in done.items() if isinstance(r, str)}
    for s, r in bad.items():
        print(f"  {s}: {r}")
    print(f"wrote {len(done)} GeoJSON files to {args.out} ({len(bad)} without attention tiles)")
    return 0
