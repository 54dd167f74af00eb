"""`zoomfeat view` / `export-qupath` on a small real result folder (synthetic WSIs → tile → colour bags → `mil cv`
+ `compare`): attention recomputed from fold checkpoints equals what `mil cv` saved, the HTTP routes serve real
Deep Zoom tiles and overlays, the static export is complete, and QuPath GeoJSON is valid and inside the slide.
The headless-Chromium checks (skipped when no Chromium is found) share the same result folder."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.viewer_cohort import build


N_SLIDES = 8  # syn000 … syn007


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("viewer"), n_slides=N_SLIDES)


@pytest.fixture(scope="module")
def res(built):
    from zoomfeat.viewer import Results

    return Results(built["root"], generated=built["root"] / "no_generation_here")


def test_runs_found_and_recomputed_attention_matches_mil_cv(res, built):
    names = {r.name for r in res.runs}
    assert names == {"cv"} | {f"compare/colour-{m}/{t}" for m in ("20x", "5x") for t in ("hrd", "survival")}
    assert len(res.slide_ids) == N_SLIDES
    cv = res.by_name["cv"]
    pred = cv.predictions.set_index("slide")
    for sid in res.slide_ids:
        saved = pd.read_csv(built["cv"] / "attention" / f"{sid}.csv")
        again = res.compute_attention(cv, sid, int(pred.loc[sid, "fold"]))
        # the fold head rebuilt from best.pt reproduces mil cv's attention and out-of-fold probabilities
        np.testing.assert_allclose(again["attention"], saved["score"].to_numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(again["pred"], pred.loc[sid, ["prob_0", "prob_1"]].to_numpy(float), atol=1e-5)
        att = res.attention("cv", sid)
        assert att.order.min() == 1 and att.order[np.argmax(att.score)] == 1
    # compare saves no attention: it is recomputed, one score per 20x tile or per 5x region
    from zoomfeat.bags import load_bag

    bag = load_bag(res.bags["cv"]["syn003"])
    assert len(res.attention("compare/colour-20x/survival", "syn003").score) == len(bag.coords)
    a5 = res.attention("compare/colour-5x/hrd", "syn003")
    assert len(a5.score) == len(bag.coords_5x) and a5.size == 4 * res.grid("syn003")["size"]


def test_site_routes_tiles_overlays_crops(res):
    import openslide

    from zoomfeat.viewer import Site
    from zoomfeat.viewer.site import NotFound

    site = Site(res)
    sid = "syn003"
    src = site.source(sid)
    top = src.dz.level_count - 1
    body, ctype = site.get(f"dz/{sid}_files/{top}/0_0.jpeg")
    assert ctype == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
    tile = np.asarray(Image.open(io.BytesIO(body)))
    with openslide.OpenSlide(str(res.slide_path(sid))) as osr:
        ref = np.asarray(osr.read_region((0, 0), 0, tile.shape[1::-1]).convert("RGB"))
        w, h = osr.dimensions
    assert np.abs(tile.astype(int) - ref).mean() < 6  # JPEG of the real level-0 pixels
    assert "<Image" in site.get(f"dz/{sid}.dzi")[0].decode()
    # heatmap: the most attended tile is drawn red (jet 1.0), the least attended blue (jet ~0)
    att = res.attention("cv", sid)
    i = [r.name for r in res.runs].index("cv")
    heat = np.asarray(Image.open(io.BytesIO(site.get(f"overlay/{sid}/heat/{i}.png")[0])).convert("RGBA"))
    k = heat.shape[1] / w
    hi, lo = np.argmax(att.score), np.argmin(att.score)
    px = lambda j: heat[int((att.y[j] + att.size / 2) * k), int((att.x[j] + att.size / 2) * k)]  # noqa: E731
    assert px(hi)[0] > 100 and px(hi)[2] < 60 and px(hi)[3] == 255
    assert px(lo)[2] > 100 and px(lo)[0] < 60
    assert heat[..., 3].mean() > 0 and (heat[..., 3] == 0).any()  # cells only where tiles are
    tissue = np.asarray(Image.open(io.BytesIO(site.get(f"overlay/{sid}/tissue.png")[0])))
    assert 0.05 < (tissue[..., 3] > 0).mean() < 0.95
    crop = np.asarray(Image.open(io.BytesIO(site.get(f"crop/{sid}/0_0_256.jpg")[0])))
    assert crop.shape == (192, 192, 3)
    for bad in ("slides/nope.html", "dz/nope_files/0/0_0.jpeg", f"dz/{sid}_files/{top}/99_99.jpeg",
                "static/../results.py", "files/../../etc/passwd", "overlay/syn003/heat/99.png"):
        with pytest.raises(NotFound):
            site.get(bad)
    html = site.get(f"slides/{sid}.html")[0].decode()
    assert "openseadragon.min.js" in html and '"slide":"syn003"' in html


def test_http_server_binds_localhost_and_serves(res):
    from zoomfeat.viewer import Site, serve_in_thread

    httpd, url = serve_in_thread(Site(res), port=0)
    try:
        assert httpd.server_address[0] == "127.0.0.1"
        page = urllib.request.urlopen(url).read().decode()
        assert all(f'"slide":"{s}"' in page for s in res.slide_ids)
        r = urllib.request.urlopen(url + "dz/syn000_files/9/0_0.jpeg")
        assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "slides/ghost.html")
        assert e.value.code == 404
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_export_qupath_geojson_valid_and_inside_slide(res, built, tmp_path):
    import openslide

    from zoomfeat.cli import main
    from zoomfeat.viewer import check_feature_collection

    out = tmp_path / "qp"
    assert main(["export-qupath", str(built["root"]), "--out", str(out), "--run", "cv"]) == 0
    files = sorted(out.glob("*.geojson"))
    assert [p.stem for p in files] == res.slide_ids
    pred = res.by_name["cv"].predictions.set_index("slide")
    for p in files:
        fc = json.loads(p.read_text())
        with openslide.OpenSlide(str(res.slide_path(p.stem))) as osr:
            w, h = osr.dimensions
        assert check_feature_collection(fc, w, h) == []
        tiles = [f for f in fc["features"] if f["properties"]["objectType"] == "tile"]
        tissue = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
        assert tissue and all(f["properties"]["classification"]["name"] == "Tissue" for f in tissue)
        grid = res.grid(p.stem)
        n20, n5 = len(grid["coords"]), len(grid["coords_5x"])
        assert len(tiles) == n20 + n5  # every 20x tile (cv, colour-20x runs) + every 5x region (colour-5x run)
        m = [t["properties"]["measurements"] for t in tiles if "cv: attention" in t["properties"]["measurements"]]
        assert len(m) == n20 and sorted(x["cv: attention rank"] for x in m) == list(range(1, n20 + 1))
        saved = pd.read_csv(built["cv"] / "attention" / f"{p.stem}.csv")
        assert np.isclose(sum(x["cv: attention"] for x in m), saved["score"].sum())
        cls = res.by_name["cv"].classes[int(pred.loc[p.stem, "pred"])]
        assert {t["properties"]["classification"]["name"] for t in tiles} == {cls}
    # the checker does fail: a polygon outside the slide, an open ring, a bad geometry type
    bad = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9e9, 0], [9e9, 5], [0, 0]]]},
         "properties": {"objectType": "tile"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
         "properties": {"objectType": "tile"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {"objectType": "tile"}}]}
    errs = check_feature_collection(bad, 100, 100)
    assert len(errs) == 3 and "leaves the slide" in errs[0]


@pytest.fixture(scope="module")
def exported(res, tmp_path_factory):
    from zoomfeat.viewer import export_site

    site_dir = tmp_path_factory.mktemp("site")
    return export_site(res, site_dir, max_side=512, progress=False)


def test_static_export_is_complete(res, exported):
    import re

    from zoomfeat.viewer import Site

    site_dir = exported.parent
    assert exported.exists() and (site_dir / "static/openseadragon/openseadragon.min.js").exists()
    assert (site_dir / "static/openseadragon/LICENSE.txt").exists()
    for sid in res.slide_ids:
        html = (site_dir / "slides" / f"{sid}.html").read_text()
        zf = json.loads(re.search(r"window\.ZF = (\{.*\});</script>", html).group(1).replace("<\\/", "</"))
        size = zf["dzi"]["Image"]["Size"]
        assert max(int(size["Width"]), int(size["Height"])) <= 512
        src = Site(res).source(sid)
        lvl = next(i for i, d in enumerate(src.dz.level_dimensions) if d == (int(size["Width"]), int(size["Height"])))
        cols, rows = src.dz.level_tiles[lvl]
        assert (site_dir / "dz" / f"{sid}_files" / str(lvl) / f"{cols - 1}_{rows - 1}.jpeg").exists()
        assert not (site_dir / "dz" / f"{sid}_files" / str(lvl + 1)).exists()  # the level cap
        for run in zf["runs"]:
            assert (site_dir / "slides" / run["heat"]).resolve().exists()
        for u in zf["overlays"].values():
            assert (site_dir / "slides" / u).resolve().exists()
        g = zf["grid"]
        for x, y, px, py, ps in zip(g["x"], g["y"], g["px"], g["py"], g["ps"]):
            assert (site_dir / "crop" / sid / f"{x}_{y}_{int(g['size'])}.jpg").exists()
            assert (site_dir / "crop" / sid / f"{px}_{py}_{ps}.jpg").exists()
    assert len(list((site_dir / "gallery").glob("*.html"))) == len(res.runs)
    assert (site_dir / "files" / "compare" / "compare.png").exists()


def test_cli_help_and_bad_run_dir(tmp_path, capsys):
    from zoomfeat.cli import main

    with pytest.raises(SystemExit) as e:
        main(["view", "--help"])
    assert e.value.code == 0 and "127.0.0.1" in capsys.readouterr().out
    assert main(["view", str(tmp_path), "--port", "0"]) == 2
    assert "no predictions.csv" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- headless Chromium
def _chromium():
    from zoomfeat.viewer.browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium, or set $CHROMIUM): browser checks skipped")
    return path


@pytest.fixture(scope="module")
def browser():
    from zoomfeat.viewer.browser import Browser

    with Browser(_chromium(), width=1280, height=900, timeout=90) as b:
        yield b


def _viewer_pixels(b, png: bytes) -> np.ndarray:
    r = b.eval("(function(){var r=document.getElementById('osdA').getBoundingClientRect();"
               "return [r.left, r.top, r.right, r.bottom].map(Math.round);})()")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return img[r[1] + 2:r[3] - 2, r[0] + 2:r[2] - 2]


def _screen_xy(b, x: float, y: float) -> tuple[int, int]:
    """Page pixel of level-0 point (x, y) in viewer A."""
    return tuple(b.eval(f"(function(){{var v=zfViews.A.v, W=ZF.width;"
                        f"var p=v.viewport.pixelFromPoint(new OpenSeadragon.Point({x}/W, {y}/W), true);"
                        f"var r=document.getElementById('osdA').getBoundingClientRect();"
                        f"return [Math.round(p.x + r.left), Math.round(p.y + r.top)];}})()"))


def test_browser_index_slide_heatmap_click_and_tiles(browser, res):
    from zoomfeat.viewer import Site, serve_in_thread

    httpd, url = serve_in_thread(Site(res), port=0)
    b = browser
    try:
        b.goto(url + "index.html")
        listed = b.eval("Array.from(document.querySelectorAll('#slides tbody tr')).map(function(t){return t.dataset.slide})")
        assert sorted(listed) == res.slide_ids
        # the filter keeps the matching rows only ('syn00' matched 10 of 12 slides when the cohort had 12)
        b.eval("var f=document.getElementById('filter'); f.value='syn003'; f.dispatchEvent(new Event('input')); 1")
        assert b.eval("document.querySelectorAll('#slides tbody tr').length") == 1

        sid = "syn003"
        b.goto(url + f"slides/{sid}.html?run=cv&heat=0")
        off = b.screenshot()
        b.goto(url + f"slides/{sid}.html?run=cv&heat=1")
        on = b.screenshot()
        v_off, v_on = _viewer_pixels(b, off), _viewer_pixels(b, on)
        mx, mn = v_off.max(-1), v_off.min(-1)
        tissue = ((mx - mn) > 40) & (mx > 80) & (v_off[..., 0] > v_off[..., 1])  # pink / purple H&E
        assert tissue.mean() > 0.03, f"tissue covers only {tissue.mean():.3f} of the viewer"
        changed = np.abs(v_on - v_off).sum(-1) > 60
        assert changed.mean() > 0.03, f"heatmap changes only {changed.mean():.3f} of the viewer"
        # the heatmap is where the attention is: most attended tile reddest, least attended bluest
        att = res.attention("cv", sid)
        img_on = np.asarray(Image.open(io.BytesIO(on)).convert("RGB")).astype(int)
        img_off = np.asarray(Image.open(io.BytesIO(off)).convert("RGB")).astype(int)

        def shift(j):
            x, y = _screen_xy(b, att.x[j] + att.size / 2, att.y[j] + att.size / 2)
            d = img_on[y - 3:y + 4, x - 3:x + 4].mean((0, 1)) - img_off[y - 3:y + 4, x - 3:x + 4].mean((0, 1))
            return d[0] - d[2]  # red gained minus blue gained

        hi, lo = shift(int(np.argmax(att.score))), shift(int(np.argmin(att.score)))
        print(f"viewer: tissue {tissue.mean():.3f}, heatmap-changed {changed.mean():.3f}, red-blue shift top {hi:.0f} "
              f"bottom {lo:.0f}")
        assert hi > 20 and lo < -20

        # a real click on the most attended tile: the panel names it #1 for this run, with 20x + 5x crops
        j = int(np.argmax(att.score))
        x, y = _screen_xy(b, att.x[j] + att.size / 2, att.y[j] + att.size / 2)
        for kind in ("mousePressed", "mouseReleased"):
            b.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                   session=True)
        b.wait_for("document.querySelectorAll('#clicked .ranks li').length > 0")
        lines = b.eval("Array.from(document.querySelectorAll('#clicked .ranks li')).map(function(l){return l.textContent})")
        assert len(lines) == len(res.runs) and any(s.startswith("cv: #1 of ") for s in lines)
        b.wait_for("Array.from(document.querySelectorAll('#clicked img')).every(function(i){return i.complete && i.naturalWidth > 0})")
        assert b.eval("document.querySelectorAll('#clicked img').length") == 2

        b.goto(url + f"slides/{sid}.html?sbs=1&tissue=1&grid=1&regions=1")
        assert b.eval("zfViews.B.v.world.getItemCount()") == 5
        b.goto(url + "gallery/0.html")
        b.wait_for("Array.from(document.images).every(function(i){return i.complete && i.naturalWidth > 0})")
        tile = b.eval(f"fetch('{url}dz/{sid}_files/11/0_0.jpeg').then(function(r){{return r.arrayBuffer()"
                      ".then(function(a){return [r.status, r.headers.get('content-type'), Array.from(new Uint8Array(a).slice(0, 3))]})})")
        assert tile == [200, "image/jpeg", [255, 216, 255]]
        assert b.errors == [], b.errors
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_browser_static_export_from_file_url(browser, res, exported):
    b = browser
    b.errors.clear()
    b.goto(exported.as_uri())
    assert b.eval("document.querySelectorAll('#slides tbody tr').length") == len(res.slide_ids)
    b.goto((exported.parent / "slides" / "syn000.html").as_uri() + "?tissue=1&grid=1")
    px = _viewer_pixels(b, b.screenshot())
    assert (px.max(-1) - px.min(-1) > 40).mean() > 0.03  # tissue + heatmap drawn from the exported tiles
    assert b.errors == [], b.errors


def test_generated_patches_beside_their_real_region(built, tmp_path):
    """Real generation with the vendored micro ZoomLDM from the SSL grid of one real 5x region; the index shows
    the patches next to that region (the `.region.json` sidecar the demo writes). A default test (issue 23.3):
    about 5 s on 2 shared cores beside the module's cohort (2 patches, 1 sampler step)."""
    import torch

    from tests.conftest import MICRO_LDM
    from zoomfeat.cli import main
    from zoomfeat.encoders import create_encoder
    from zoomfeat.slides.coords import coords_path, read_coords
    from zoomfeat.slides.reader import open_slide
    from zoomfeat.viewer import Results, Site

    g = read_coords(coords_path(built["tiles"], "syn003"))
    x0, y0 = (int(v) for v in g.coords_5x[0])
    step = g.patch_size_level0
    with open_slide(built["slides"] / "syn003.tiff") as wsi:
        tiles = np.stack([wsi.read_region_l0(x0 + c * step, y0 + r * step, step, 256) for r in range(4) for c in range(4)])
    with torch.inference_mode():
        emb = create_encoder("tiny-vit", dim=24).encode(torch.from_numpy(tiles))
    npy = tmp_path / "grid.npy"
    np.save(npy, emb.float().T.reshape(1, 24, 4, 4).numpy())
    npy.with_suffix(".region.json").write_text(json.dumps({"slide": "syn003", "x": x0, "y": y0, "size_l0": 4 * step}))
    out = tmp_path / "generated" / "5x"
    assert main(["generate", "--model", str(MICRO_LDM / "weights.ckpt"), "--official-config",
                 str(MICRO_LDM / "config.yaml"), "--ssl", str(npy), "--mag", "5x", "--n", "2", "--steps", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    site = Site(Results(built["root"], generated=tmp_path / "generated"))
    (entry,) = site.generated_entries()
    assert entry["region"]["slide"] == "syn003" and len(entry["images"]) == 2
    assert site.get(entry["region"]["url"])[0][:2] == b"\xff\xd8"
    assert site.get(entry["images"][0])[0][:4] == b"\x89PNG"
    assert '"generated":[{' in site.get("index.html")[0].decode()


def test_discovers_multi_framework_compare_and_skips_prediction_only_folders(tmp_path):
    """compare with several frameworks writes {root}/{encoder}/{framework}/{task}: each run gets its encoder entry
    and its framework; a `mil predict` folder (predictions without folds) is not a run."""
    import yaml

    from zoomfeat.viewer.results import discover_runs

    cfg = {"model": "abmil", "frameworks": ["linear", "abmil"],
           "encoders": [{"name": "enc-a", "bags": "bags_a", "mag": "20x+5x"}],
           "tasks": [{"name": "subtype", "task": "multiclass", "target": "subtype"}]}
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "config.yaml").write_text(yaml.safe_dump(cfg))
    for fw in ("linear", "abmil"):
        leaf = tmp_path / "compare" / "enc-a" / fw / "subtype"
        leaf.mkdir(parents=True)
        pd.DataFrame({"slide": ["s1"], "patient": ["p1"], "fold": [0], "y": [1], "label": [1], "pred": [1],
                      "prob_0": [0.2], "prob_1": [0.8]}).to_csv(leaf / "predictions.csv", index=False)
    (tmp_path / "external").mkdir()
    pd.DataFrame({"slide": ["s9"], "prob_0": [0.5], "prob_1": [0.5], "pred": [0]}).to_csv(
        tmp_path / "external" / "predictions.csv", index=False)
    runs = {r.name: r for r in discover_runs(tmp_path)}
    assert set(runs) == {"compare/enc-a/linear/subtype", "compare/enc-a/abmil/subtype"}
    for fw in ("linear", "abmil"):
        r = runs[f"compare/enc-a/{fw}/subtype"]
        assert (r.model, r.encoder, r.mag, r.task) == (fw, "enc-a", "20x+5x", "multiclass")


def test_gallery_extremes_equal_a_stable_tuple_sort():
    """The vectorised gallery pick equals sorting every (rank, score, slide, x, y, size) tuple (ties included)."""
    from zoomfeat.viewer import Attention
    from zoomfeat.viewer.site import extremes

    rng = np.random.default_rng(0)
    atts = []
    for s in range(6):
        n = int(rng.integers(1, 40))
        score = rng.integers(0, 4, n).astype(float) / 4  # many exact ties in (rank, score)
        rank = rng.integers(0, 3, n).astype(float) / 3
        atts.append((f"s{s % 4}", Attention(rng.integers(0, 9000, n).astype(float), rng.integers(0, 9000, n) + 0.7,
                                            256.0, score, rank)))
    items = [(float(a.rank[j]), float(a.score[j]), sid, int(a.x[j]), int(a.y[j]), float(a.size))
             for sid, a in atts for j in range(len(a.score))]
    items.sort(key=lambda t: (t[0], t[1]))
    for k in (1, 8, len(items) + 3):
        assert extremes(atts, k) == (items[::-1][:k], items[:k])
    assert extremes([], 8) == ([], [])
