"""``zoomfeat view``: the viewer over HTTP on 127.0.0.1 (standard-library ThreadingHTTPServer), and ``--export``."""

from __future__ import annotations

import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from zoomfeat.viewer import pages
from zoomfeat.viewer.results import inside
from zoomfeat.viewer.site import NotFound, Site, parent_region, static_root

HOST = "127.0.0.1"


def host_allowed(host: str | None, port: int) -> bool:
    """Whether a request's ``Host`` header names this server: 127.0.0.1, localhost or [::1] with its port (the
    port may be left out only when it is 80). Anything else, a missing Host included, is refused (421)."""
    if not host:
        return False
    names = ("127.0.0.1", "localhost", "[::1]")
    ok = {f"{n}:{port}" for n in names} | (set(names) if int(port) == 80 else set())
    return host.strip().lower() in ok


def make_handler(site: Site, quiet: bool = True):
    class Handler(BaseHTTPRequestHandler):
        server_version = "zoomfeat-view"

        def do_GET(self):  # noqa: N802 - http.server's name
            path = unquote(urlsplit(self.path).path)
            if not host_allowed(self.headers.get("Host"), self.server.server_address[1]):
                # DNS rebinding: a web page on evil.example resolving to 127.0.0.1 sends its own Host
                body = b"misdirected request: Host must be 127.0.0.1, localhost or [::1] with this server's port"
                self.send_response(421)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            try:
                body, ctype = site.get(path)
                code = 200
            except NotFound as exc:
                body, ctype, code = f"not found: {exc}".encode(), "text/plain; charset=utf-8", 404
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                body, ctype, code = f"error: {type(exc).__name__}: {exc}".encode(), "text/plain; charset=utf-8", 500
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache" if ctype.startswith("text/html") else "max-age=3600")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    return Handler


def make_server(site: Site, port: int = 8000, quiet: bool = True) -> ThreadingHTTPServer:
    """Bound to 127.0.0.1 only (results may hold patient data); ``port=0`` picks a free port."""
    httpd = ThreadingHTTPServer((HOST, int(port)), make_handler(site, quiet))
    httpd.daemon_threads = True
    return httpd


def serve_in_thread(site: Site, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the server in a daemon thread; returns it and its base URL (tests, notebooks)."""
    httpd = make_server(site, port)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://{HOST}:{httpd.server_address[1]}/"


def export_site(results, out: str | Path, max_side: int = 8192, crop_limit: int = 3000, progress: bool = True) -> Path:
    """Write every page of the viewer into ``out`` (open ``out/index.html`` without a server).

    Deep Zoom tiles are written for levels whose larger side is ≤ ``max_side`` px (the full slide of a
    100k-px WSI would be ~10 GB); tile / region crops for click panels are written for slides with at most
    ``crop_limit`` tiles (gallery crops always).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    site = Site(results, max_side=max_side, crop_limit=crop_limit)

    def put(rel: str, data: bytes | None = None) -> None:
        p = out / rel
        if ".." in rel.split("/") or inside(out, p.parent) is None:  # never write outside the site folder
            raise NotFound(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if data is not None else site.get(rel)[0])

    if (out / "static").exists():
        shutil.rmtree(out / "static")
    shutil.copytree(static_root(), out / "static")
    put("index.html")
    for e in site.table_entries():
        put(e["url"])
    for g in site.generated_entries():
        for u in g["images"] + ([g["region"]["url"]] if g["region"] else []):
            try:
                put(u)
            except NotFound:  # e.g. a region larger than a request may read: the page shows it missing
                pass
    crops: set[tuple[str, int, int, int]] = set()
    for i in range(len(results.runs)):
        data = site.gallery_data(i)
        put(f"gallery/{i}.html", pages.gallery_page(results, i, data).encode())
        for cls in data.values():
            for c in cls["top"] + cls["bottom"]:
                if c["crops"]:
                    crops.add((c["slide"], c["x"], c["y"], int(c["size"])))
                    crops.add((c["slide"], *(int(v) for v in c["region"])))
    for sid in tqdm(results.slide_ids, desc="export", unit="slide", disable=not progress):
        _export_slide(site, sid, put, crops)
    for sid, x, y, s in sorted(crops):
        put(f"crop/{sid}/{x}_{y}_{s}.jpg")
    return out / "index.html"


def _export_slide(site: Site, sid: str, put, crops: set) -> None:
    src = site.source(sid)
    put(f"slides/{sid}.html")  # says "crops": false when the slide's click crops are not written below
    for name in ("tissue.png", "grid.png", "regions.png"):
        try:
            put(f"overlay/{sid}/{name}")
        except NotFound:
            pass
    for i, run in enumerate(site.res.runs):
        if sid in run.slides and site.res.attention(run.name, sid) is not None:
            put(f"overlay/{sid}/heat/{i}.png")
    if src is None:
        return
    for lvl in range(site.max_level(src) + 1):
        cols, rows = src.dz.level_tiles[lvl]
        for c in range(cols):
            for r in range(rows):
                put(f"dz/{sid}_files/{lvl}/{c}_{r}.jpeg", src.tile_jpeg(lvl, c, r))
    if site.crops(sid):
        g = site.res.grid(sid)
        for x, y in g["coords"]:
            crops.add((sid, int(x), int(y), int(g["size"])))
            crops.add((sid, *(int(v) for v in parent_region(g, x, y, g["size"]))))


def serve(results, port: int = 8000) -> None:
    """Serve until Ctrl-C."""
    site = Site(results)
    httpd = make_server(site, port, quiet=False)
    url = f"http://{HOST}:{httpd.server_address[1]}/"
    print(f"zoomfeat view: {len(results.slide_ids)} slides, {len(results.runs)} runs at {url}  (Ctrl-C stops)",
          flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        httpd.server_close()
