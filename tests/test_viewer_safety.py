"""Issue 25, findings 1 and 2: the viewer serves and exports only files inside the run folder (symlinks resolved),
escapes what it embeds for its context, bounds the pixels one request reads, and refuses foreign ``Host`` headers.
A tiny hand-made run folder (no training) keeps these fast."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pandas as pd
import pytest

from zoomfeat.viewer.site import NotFound

SECRET = "top-secret-line\n"
EVIL_LABEL = "<!--<script>"
ODD_IDS = ["a#1", "b?2", "c%3", "d\u2028e"]


def _png(path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)


@pytest.fixture()
def run_dir(tmp_path):
    """A `mil cv`-like folder: predictions + labels with a hostile label value, a generation.json naming a file
    outside the run, a symlinked summary.md pointing outside, and slide ids needing URL encoding."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    (outside / "secret.png").write_bytes(b"\x89PNG-not-yours")
    root = tmp_path / "run"
    cv = root / "cv"
    cv.mkdir(parents=True)
    ids = ["s0"] + ODD_IDS
    pd.DataFrame({"slide": ids, "patient": ids, "fold": 0, "y": [0, 1, 0, 1, 0],
                  "label": [EVIL_LABEL, "b", EVIL_LABEL, "b", EVIL_LABEL], "pred": 0, "prob_0": 0.6,
                  "prob_1": 0.4}).to_csv(cv / "predictions.csv", index=False)
    (cv / "summary.md").symlink_to(outside / "secret.md")
    (root / "compare.md").write_text("| a | b |\n")
    gen = root / "gen"
    gen.mkdir()
    _png(gen / "ok.png")
    (gen / "link.png").symlink_to(outside / "secret.png")
    rel = os.path.relpath(outside / "secret.md", gen)
    (gen / "generation.json").write_text(json.dumps({"files": ["ok.png", rel, "link.png", "../../outside/secret.png",
                                                               str(outside / "secret.md")], "mag": "20x"}))
    return root


def test_generation_files_outside_the_run_are_not_served(run_dir):
    from zoomfeat.viewer import Results, Site

    site = Site(Results(run_dir))
    (g,) = site.generated_entries()
    assert g["images"] == ["gen/0/ok.png"]  # '../' entries, absolute paths and symlinks out are dropped
    assert site.get("gen/0/ok.png")[0][:4] == b"\x89PNG"
    for name in ("secret.md", "secret.png", "link.png"):
        with pytest.raises(NotFound):
            site.get(f"gen/0/{name}")


def test_symlinked_table_outside_the_run_is_not_embedded(run_dir):
    from zoomfeat.viewer import Results, Site

    site = Site(Results(run_dir))
    names = [e["name"] for e in site.table_entries()]
    assert names == ["compare.md"]
    assert "top-secret" not in site.get("index.html")[0].decode()
    with pytest.raises(NotFound):
        site.get("files/cv/summary.md")


def test_export_copies_nothing_from_outside(run_dir, tmp_path):
    from zoomfeat.viewer import Results, export_site

    out = tmp_path / "site"
    export_site(Results(run_dir), out, progress=False)
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".md", ".png", ".html", ".json"):
            data = p.read_bytes()
            assert b"top-secret" not in data and b"PNG-not-yours" not in data, p
    assert (out / "gen" / "0" / "ok.png").is_file() and not (out / "gen" / "0" / "link.png").exists()


def test_script_json_escapes_html_breakers():
    from zoomfeat.viewer.pages import script_json

    s = script_json({"label": EVIL_LABEL + "</script>&\u2028\u2029>"})
    assert not any(c in s for c in "<>&\u2028\u2029")
    assert json.loads(s)["label"] == EVIL_LABEL + "</script>&\u2028\u2029>"


def test_hostile_label_does_not_break_the_page(run_dir):
    from zoomfeat.viewer import Results, Site

    site = Site(Results(run_dir))
    for page in ("index.html", "slides/s0.html", "gallery/0.html"):
        html = site.get(page)[0].decode()
        script = html.split("<script>window.ZF = ", 1)[1].split(";</script>", 1)[0]
        assert "<" not in script and ">" not in script  # nothing the HTML parser could take as markup
        assert html.count("<script") == 3


def test_overlay_urls_encode_odd_slide_ids(run_dir):
    from zoomfeat.viewer import Results, Site

    site = Site(Results(run_dir))
    for sid in ODD_IDS:
        html = site.get(f"slides/{sid}.html")[0].decode()
        data = json.loads(html.split("<script>window.ZF = ", 1)[1].split(";</script>", 1)[0])
        from urllib.parse import quote

        for url in data["overlays"].values():
            assert url.startswith(f"../overlay/{quote(sid, safe='')}/") and "#" not in url and "?" not in url


@pytest.fixture()
def flat_slide(tmp_path):
    """A 1024² slide without a pyramid (one level)."""
    from zoomfeat.slides.synthetic import write_pyramid_tiff

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    return write_pyramid_tiff(tmp_path / "flat.tiff", img, 0.5, downsamples=(1,))


def test_crop_and_tiles_bounded_in_pixels(flat_slide, monkeypatch):
    from zoomfeat.viewer import render
    from zoomfeat.viewer.render import SlideSource

    src = SlideSource(flat_slide)
    assert src.crop(0, 0, 256).size == (192, 192)
    with pytest.raises(ValueError, match="would read"):
        src.crop(0, 0, 65536)  # before: a 65536² level-0 read (~17 GB)
    with pytest.raises(ValueError):
        src.crop(0, 0, 0)
    monkeypatch.setattr(render, "MAX_READ_PX", 300 * 300)
    top = src.dz.level_count - 1
    assert src.tile_jpeg(top, 0, 0)[:2] == b"\xff\xd8"  # a 256-px tile of level 0: fine
    with pytest.raises(ValueError, match="would read"):
        src.tile_jpeg(0, 0, 0)  # the 1-px level reads the whole level 0 of a slide without a pyramid
    with pytest.raises(ValueError, match="would read"):
        src.thumbnail(64)
    src.close()


def test_site_crop_route_refuses_huge_crops(run_dir, flat_slide):
    from zoomfeat.viewer import Results, Site

    slides = flat_slide.parent / "slides"
    slides.mkdir()
    os.replace(flat_slide, slides / "s0.tiff")
    site = Site(Results(run_dir, slides=slides))
    assert site.get("crop/s0/0_0_256.jpg")[0][:2] == b"\xff\xd8"
    with pytest.raises(NotFound):
        site.get("crop/s0/0_0_65536.jpg")


def _raw_get(port: int, host: str | None) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = "GET /index.html HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") \
            + "Connection: close\r\n\r\n"
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_foreign_host_header_refused(run_dir):
    from zoomfeat.viewer import Results, Site, serve_in_thread

    httpd, _ = serve_in_thread(Site(Results(run_dir)), port=0)
    port = httpd.server_address[1]
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert _raw_get(port, host) == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1", None):
            assert _raw_get(port, host) in (403, 421), host
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unsafe_slide_ids_in_predictions_are_ignored(run_dir, tmp_path):
    """A predictions.csv naming `../../escape` must not make the viewer read or the export write outside."""
    from zoomfeat.viewer import Results, export_site

    pred = run_dir / "cv" / "predictions.csv"
    df = pd.read_csv(pred)
    extra = df.iloc[:1].assign(slide="../../../escape", patient="p")
    pd.concat([df, extra]).to_csv(pred, index=False)
    with pytest.warns(UserWarning, match="unsafe slide id"):
        res = Results(run_dir)
    assert "../../../escape" not in res.slide_ids and len(res.slide_ids) == 5
    export_site(res, tmp_path / "a" / "b" / "site", progress=False)
    assert not list(tmp_path.glob("**/escape*"))


def test_pickled_fold_checkpoint_is_refused_not_a_500(run_dir):
    """Recomputing attention from a pickled fold0/best.pt refuses the file (no attention), never unpickles it."""
    import pickle

    import yaml

    from zoomfeat.viewer import Results, Site
    from zoomfeat.viewer.results import fold_model

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    cv = run_dir / "cv"
    (cv / "config.yaml").write_text(yaml.safe_dump({"model": "abmil", "task": "binary", "mag": "20x"}))
    (cv / "fold0").mkdir()
    (cv / "fold0" / "best.pt").write_bytes(pickle.dumps(Evil()))
    res = Results(run_dir)
    with pytest.raises(ValueError, match="refusing to load"):
        fold_model(res.by_name["cv"], 0, 8)
    assert Site(res).get("slides/s0.html")[1].startswith("text/html")


def test_malformed_generation_json_is_skipped_not_fatal(run_dir):
    """A received run folder with one broken ``generation.json`` (not JSON, not an object, odd field types) used to
    stop ``zoomfeat view`` (a JSON error without the file's name, or an AttributeError traceback); now that folder
    is ignored with a warning naming it and the rest of the run is served."""
    from zoomfeat.viewer import Results, Site

    bad = {"notjson": "{not json", "list": "[1, 2]", "files_str": '{"files": "ok.png"}', "ssl_num": '{"ssl": 5}'}
    for name, text in bad.items():
        (run_dir / name).mkdir()
        (run_dir / name / "generation.json").write_text(text)
    with pytest.warns(UserWarning) as rec:
        site = Site(Results(run_dir))
    msgs = " ".join(str(w.message) for w in rec)
    for name in bad:
        assert f"{name}/generation.json: ignored" in msgs
    assert [g["images"] for g in site.generated_entries()] == [["gen/0/ok.png"]]
    assert site.get("index.html")[1].startswith("text/html")
