"""Backprop-free (finite-difference) vs autograd constraint guidance: time and peak-memory ratios on one problem.

Both variants run the same constraint update (``zoomfeat.generate.large.guided_update``) on the same batch,
timestep and guide tiles: the FD variant uses 2 encoder + 2 denoiser evaluations per iteration and keeps no
graph; the autograd variant backpropagates ½‖tile − down(D(x̂0(x_t)))‖² through the VQ decoder and the UNet (both
CFG branches). Goal: FD/autograd ≤ 0.5 in time and in peak memory.

Memory on CPU: ``tracemalloc`` does not see torch's allocator, so each variant runs in its own subprocess with
glibc told to return freed blocks at once (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``); a thread
samples the resident set (psutil) every 2 ms and the peak above the post-warm-up baseline is reported
(``ru_maxrss`` cannot be used alone: model loading sets the high-water mark). On CUDA it is
``torch.cuda.max_memory_allocated`` above the baseline. Time is best-of-N wall and process-CPU seconds after one
warm-up (CPU seconds matter on a shared machine).

FLOPs (``torch.utils.flop_counter``, hardware-independent) are counted on the warm-up call, and the fd worker
also times and counts the pieces of one update -- a CFG denoiser pass U, a decode D, an encode of two images E2 --
so the steady-state cost per update is printed beside the measured one: fd = D + E2 + 2U, autograd = forward +
backward of U and D. ``D + U`` (decode once, recompute ε once) is the floor of any update that keeps no graph, so
``(D + U) / autograd`` bounds the time ratio any backprop-free variant of this kind can reach.

Problems: ``tiny`` = the fixture model (64 px, 2×2 grid, batch 2, 2 iterations); ``full`` = one guided step of
the full-size BRCA architecture (random init from configs/ldm/zoomldm_brca.yaml, 256 px, 4×4 grid, batch 1,
1 iteration).

    .venv/bin/python benchmarks/guidance.py [--problems tiny,full] [--device cpu|cuda] [--threads 2] [--repeats 2]

``--in-process`` (what the test suite uses on ``tiny``) runs both variants in the calling process instead of one
subprocess each: the FLOP accounting and the printed lines are the same, the time is not spent importing torch and
diffusers twice, but the peak-memory figures are no longer isolated (the allocator keeps what the first variant freed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "zoomldm_official_micro"  # vendored official-format fixture (random weights)
PROBLEMS = {
    "tiny": {"n": 2, "batch": 2, "n_steps": 2},
    "full": {"n": 4, "batch": 1, "n_steps": 1},
}


class RssSampler:
    """Peak resident set size of this process, sampled in a thread."""

    def __init__(self, period: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.period = period
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker(problem: str, mode: str, device: str, threads: int, repeats: int, collect: bool = True) -> dict:
    """One variant's measurements. ``collect=False`` (--in-process) skips the ``gc.collect`` calls that settle the
    resident set between measurements: in a shared process (a test session) each one walks every live object,
    and the in-process run's memory figures are not isolated anyway."""
    import gc

    import psutil
    import torch

    from torch.utils.flop_counter import FlopCounterMode

    from zoomfeat.generate.large import LargeImageConfig, guided_update
    from zoomfeat.ldm import ZoomLDM

    torch.set_num_threads(threads)
    spec = PROBLEMS[problem]
    if problem == "tiny":
        model = ZoomLDM.load(TINY / "weights.ckpt")
    else:
        torch.manual_seed(0)
        model = ZoomLDM.from_config(ROOT / "configs" / "ldm" / "zoomldm_brca.yaml")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # the update differentiates w.r.t. x_t only
    n, b = spec["n"], spec["batch"]
    s, l = model.image_size, model.latent_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, model.latent_channels, l, l, generator=g).to(device)
    tiles = (torch.rand(b, 3, s // n, s // n, generator=g) * 2 - 1).to(device)
    grid = torch.randn(b, model.ssl_dim, 1, 1, generator=g).to(device)
    with torch.no_grad():
        ctx = model.condition(grid, 0)
    cfg = LargeImageConfig(guidance=mode, n_steps=spec["n_steps"], guidance_scale=3.0, progress=False)
    cuda = device.startswith("cuda")

    def sync(out=None):
        if cuda:
            torch.cuda.synchronize()
        return out

    def run():
        return sync(guided_update(model, x, ctx, 499, tiles, n, cfg))

    with FlopCounterMode(display=False) as counter:
        run()  # warm-up, counted
    gflop = counter.get_total_flops() / 1e9
    if collect:
        gc.collect()

    # the pieces of one update, timed and counted alone (no graph)
    pieces = {}
    calls = {"U": lambda: model.guided_eps(x, 499.0, ctx, 3.0)}
    if mode == "fd":  # the fd worker reports the pieces; autograd only needs U to strip its fixed passes
        with torch.no_grad():
            img2 = model.decode(x).repeat(2, 1, 1, 1)
        calls["D"] = lambda: model.decode(x)
        calls["E2"] = lambda: model.encode(img2)
    with torch.no_grad():
        for name, fn in calls.items():
            with FlopCounterMode(display=False) as c:
                sync(fn())
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                sync(fn())
                best = min(best, time.perf_counter() - t0)
            pieces[name] = {"wall_s": best, "gflop": c.get_total_flops() / 1e9}
    del calls
    if collect:
        gc.collect()
    if cuda:
        sync()
        base_gpu = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    base = psutil.Process().memory_info().rss
    wall, cpu = float("inf"), float("inf")
    peak = base
    for _ in range(repeats):
        with RssSampler() as rs:
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        peak = max(peak, rs.peak)
        if collect:
            gc.collect()
    res = {"problem": problem, "mode": mode, "device": device, "batch": b, "n_steps": spec["n_steps"],
           "wall_s": wall, "cpu_s": cpu, "peak_extra_mib": (peak - base) / 2**20, "baseline_rss_mib": base / 2**20,
           "gflop": gflop, "pieces": pieces}
    if cuda:
        res["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="tiny,full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    ap.add_argument("--in-process", action="store_true",
                    help="run both variants in this process (a smoke check: peak memory not isolated)")
    ap.add_argument("--worker", nargs=2, metavar=("PROBLEM", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.device, args.threads, args.repeats)))
        return 0
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0", PYTHONPATH=str(ROOT))
    rows = []
    for problem in [p.strip() for p in args.problems.split(",") if p.strip()]:
        if problem not in PROBLEMS:
            raise SystemExit(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")
        res = {}
        for mode in ("fd", "autograd"):
            if args.in_process:
                import torch

                threads = torch.get_num_threads()
                try:
                    res[mode] = worker(problem, mode, args.device, args.threads, args.repeats, collect=False)
                finally:
                    torch.set_num_threads(threads)  # worker() sets the benchmark's thread count
                rows.append(res[mode])
                continue
            cmd = [sys.executable, __file__, "--worker", problem, mode, "--device", args.device,
                   "--threads", str(args.threads), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(res[mode])
        fd, ag = res["fd"], res["autograd"]
        print(f"[{problem}] batch {fd['batch']}, {fd['n_steps']} iteration(s), {args.device}, {args.threads} thread(s)")
        for r in (fd, ag):
            print(f"  {r['mode']:9s} wall {r['wall_s']:8.2f} s  cpu {r['cpu_s']:8.2f} s  peak +{r['peak_extra_mib']:9.1f} MiB")
        print(f"  ratio fd/autograd: wall {fd['wall_s'] / ag['wall_s']:.2f}  cpu {fd['cpu_s'] / ag['cpu_s']:.2f}  "
              f"peak memory {fd['peak_extra_mib'] / max(ag['peak_extra_mib'], 1e-9):.2f}  "
              f"GFLOP {fd['gflop'] / ag['gflop']:.2f}  (goal <= 0.5)")
        print(steady_state(fd, ag))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def steady_state(fd: dict, ag: dict) -> str:
    """Cost of one more update, from the measured call minus its fixed passes, and the backprop-free floor.

    Each measured call starts with one CFG pass (both modes); autograd ends with one more to refresh ε at the
    updated x_t (fd refreshes inside every update). Removing those leaves k updates' worth of work.
    """
    k = fd["n_steps"]
    p = fd["pieces"]
    u_t, u_f = p["U"]["wall_s"], p["U"]["gflop"]
    fd_t, fd_f = (fd["wall_s"] - u_t) / k, (fd["gflop"] - u_f) / k
    ag_t, ag_f = (ag["wall_s"] - 2 * u_t) / k, (ag["gflop"] - 2 * u_f) / k
    floor_t, floor_f = p["D"]["wall_s"] + u_t, p["D"]["gflop"] + u_f
    lines = [
        f"  pieces: CFG denoiser U {u_t:.2f} s / {u_f:.1f} GFLOP, decode D {p['D']['wall_s']:.2f} s / "
        f"{p['D']['gflop']:.1f} GFLOP, encode x2 E2 {p['E2']['wall_s']:.2f} s / {p['E2']['gflop']:.1f} GFLOP",
        f"  per update (steady state): fd {fd_t:.2f} s / {fd_f:.1f} GFLOP (D + E2 + 2U), autograd {ag_t:.2f} s / "
        f"{ag_f:.1f} GFLOP (U + D forward + backward) -> ratio time {fd_t / ag_t:.2f}, GFLOP {fd_f / ag_f:.2f}",
        f"  floor of a graph-free update (D + U): time {floor_t / ag_t:.2f}, GFLOP {floor_f / ag_f:.2f} of autograd",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
