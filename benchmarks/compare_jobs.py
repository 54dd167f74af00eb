"""`zoomfeat compare --jobs 1` vs `--jobs 2` on the demo's comparison: wall, CPU, the speed-up and output identity.

Runs the demo's compare step (its 5 encoder entries × linear + ABMIL × subtype / HRD / survival × 3 × 5 folds, on
the report patients) twice in fresh processes, ``--jobs 1`` then ``--jobs N``, and prints wall and CPU seconds of
each (CPU includes the pool workers), the wall ratio (judged by: ≥ 1.7× with 2 jobs on 2 idle cores) and whether
every output file is byte-identical (checkpoints compared by their tensors).

    python benchmarks/compare_jobs.py [--demo-out demo_out] [--jobs 2] [--json out.json]
    python benchmarks/compare_jobs.py --synthetic [--slides 24 --dim 64 --epochs 20]   # no demo needed

Without a finished demo folder (``make demo``) or with ``--synthetic``, the script builds five bag folders of the demo's shape with
``mil.synthetic.write_bags`` (two informative, three noise) and times the same command on them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_argv(demo: Path) -> list[str]:
    """The demo's compare command line (zoomfeat.demo.run_demo), minus --out."""
    from zoomfeat.encoders.zoomldm import ZOOMLDM

    feats = demo / "features"
    uni, none = feats / f"features_{ZOOMLDM}", feats / f"features_{ZOOMLDM}_none"
    bags = [f"{ZOOMLDM}-uni-20x={uni}:20x", f"{ZOOMLDM}-uni-20x+5x={uni}:20x+5x", f"{ZOOMLDM}-none-20x={none}:20x",
            f"{ZOOMLDM}-none-20x+5x={none}:20x+5x", f"baseline-tinyvit={feats / 'features_tiny-vit'}:20x"]
    labels = demo / "cohort" / "labels_report.csv"
    for path in (labels, uni, none):
        if not path.exists():
            raise SystemExit(f"{path} missing: run `make demo` first (or use --synthetic)")
    argv = ["compare", "--config", "configs/mil/demo_compare.yaml", "--labels", str(labels),
            "--frameworks", "linear,abmil", "--reference", "baseline-tinyvit"]
    for b in bags:
        argv += ["--bags", b]
    return argv + ["n_folds=5"]


def synthetic_argv(root: Path, slides: int, dim: int, epochs: int) -> list[str]:
    from mil.synthetic import write_bags

    argv = ["compare", "--config", "configs/mil/demo_compare.yaml", "--frameworks", "linear,abmil",
            "--reference", "noise0", f"hparams.epochs={epochs}", "n_folds=5"]
    labels = None
    for i, (name, informative) in enumerate([("good0", True), ("good1", True), ("noise0", False),
                                            ("noise1", False), ("noise2", False)]):
        folder, lab = write_bags(root, n_slides=slides, dim=dim, seed=i if not informative else 0,
                                 informative=informative, encoder=name)
        labels = labels or lab
        argv += ["--bags", f"{name}={folder}:{'20x+5x' if i % 2 else '20x'}"]
    return argv + ["--labels", str(labels)]


def digests(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every output file; checkpoints by their tensors (a zip archive's member names
    carry the temporary file name of the atomic write). tests/test_jobs.py compares with it too."""
    import torch

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            if p.suffix == ".pt":
                state = torch.load(p, weights_only=True)
                data = b"".join(k.encode() + v.numpy().tobytes() for k, v in sorted(state.items()))
            else:
                data = p.read_bytes()
            out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def timed(argv: list[str], out: Path, jobs: int) -> dict:
    """One fresh `zoomfeat` process: wall and CPU seconds (its pool workers are its children, reaped at exit)."""
    cmd = [sys.executable, "-m", "zoomfeat", *argv, "--out", str(out), "--jobs", str(jobs)]
    env_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"--jobs {jobs} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (r.ru_utime - env_cpu.ru_utime) + (r.ru_stime - env_cpu.ru_stime)
    return {"jobs": jobs, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cpu_per_wall": round(cpu / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default="demo_out", help="a finished `make demo` folder (default demo_out)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic bag folders instead of the demo's")
    ap.add_argument("--slides", type=int, default=24, help="--synthetic: slides (the demo's report half: 24-30)")
    ap.add_argument("--dim", type=int, default=64, help="--synthetic: feature dimension")
    ap.add_argument("--epochs", type=int, default=20, help="--synthetic: ABMIL epochs (the demo's config: 20)")
    ap.add_argument("--jobs", type=int, default=2, help="the parallel run's --jobs (default 2)")
    ap.add_argument("--json", default=None, help="write the two runs and the ratio here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="compare_jobs_") as tmp:
        tmp = Path(tmp)
        synthetic = args.synthetic or not (Path(args.demo_out) / "features").is_dir()
        if synthetic and not args.synthetic:
            print(f"{args.demo_out}/features not found (run `make demo` for the demo's numbers): synthetic bags")
        argv = synthetic_argv(tmp / "bags", args.slides, args.dim, args.epochs) if synthetic else \
            demo_argv(Path(args.demo_out).resolve())
        runs = [timed(argv, tmp / "jobs1", 1), timed(argv, tmp / f"jobs{args.jobs}", args.jobs)]
        a, b = digests(tmp / "jobs1"), digests(tmp / f"jobs{args.jobs}")
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    ratio = runs[0]["wall_s"] / runs[1]["wall_s"]
    for r in runs:
        print(f"--jobs {r['jobs']}: {r['wall_s']:8.1f} s wall  {r['cpu_s']:8.1f} s CPU  ({r['cpu_per_wall']:.2f} cores)")
    print(f"speed-up --jobs 1 / --jobs {args.jobs}: {ratio:.2f}x (judged by: >= 1.7x with 2 jobs on 2 idle cores)")
    print(f"outputs: {len(a)} files, " + ("byte-identical" if not differ else f"{len(differ)} DIFFER: {differ[:5]}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "ratio": ratio, "identical": not differ,
                                               "n_files": len(a)}, indent=1))
    if differ:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
