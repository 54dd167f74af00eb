"""Issue 15: every failure of the hostile-user audit, one test each (kills placed with ZOOMFEAT_KILL_AT, not timers).

1 path traversal · 2 slide-id collisions · 3 disk full · 4 kills · 5 locks · 6 one-line errors · 7 labels ·
8 training config / val_fraction / checkpoint mismatch lists.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tests._fx_extract import Forked, run_forked, zoomfeat_main
from tests.conftest import MICRO_LDM, ROOT, SLIDES
from zoomfeat.bags import bag_path, list_bags, load_bag
from zoomfeat.cli import main
from zoomfeat.cohort import run_cohort
from zoomfeat.io import SlideLock
from zoomfeat.slides.coords import coords_path

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small synthetic slides and their tiling (20x + 5x)."""
    from zoomfeat.slides.synthetic import make_slide
    from zoomfeat.slides.tiling import tile_slide

    root = tmp_path_factory.mktemp("robust")
    for i, (size, seed) in enumerate([((768, 768), 0), ((1024, 768), 1), ((640, 896), 2)]):
        make_slide(root / "slides" / f"syn{i}.tiff", size_20x=size, seed=seed, subtype=i % 2)
        tile_slide(root / "slides" / f"syn{i}.tiff", root / "tiles", qc=False)
    return root


def _extract_args(out: Path, tiles: Path, slides, *extra: str) -> list[str]:
    return ["extract", str(slides), "--tiles", str(tiles), "--encoder", "tiny-vit", "--mags", "20x", "--workers", "0",
            "--batch-size", "8", "--out", str(out), "--no-progress", *extra]


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoomfeat", *args], env={**ENV, **env}, capture_output=True,
                          text=True, timeout=300)


def _leftovers(folder: Path) -> list[Path]:
    """Temp files and lock files anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".lock" and p.parent.name == ".locks"]


# ---------------------------------------------------------------------------------------------- 1 path traversal


def test_slide_ids_cannot_leave_the_output_folder(tmp_path):
    from zoomfeat.names import SlideIdError, check_slide_id, output_path

    for bad in ("../../escape", "/abs/escape", "a/b", "..", ".hidden", "", "x\x00y", "a\\b"):
        with pytest.raises(SlideIdError, match="not a safe slide id"):
            check_slide_id(bad)
        with pytest.raises(SlideIdError):
            output_path(tmp_path, bad, ".pt")
    assert output_path(tmp_path, "TCGA-AB-1234 (2)", ".h5") == tmp_path / "TCGA-AB-1234 (2).h5"


@pytest.mark.parametrize("name", ["../../escape", "ABSOLUTE"])
def test_coords_name_attribute_cannot_write_outside(cohort, tmp_path, name, capsys):
    """A coordinate file received from someone else names itself '../../escape' (or an absolute path): with
    --clam-pt nothing is written outside the output folder and the slide fails with a clear error."""
    tiles = tmp_path / "tiles"
    shutil.copytree(cohort / "tiles", tiles)
    name = str(tmp_path / "abs_escape") if name == "ABSOLUTE" else name
    with h5py.File(coords_path(tiles, "syn0"), "r+") as f:
        f["coords"].attrs["name"] = name
    out = tmp_path / "deep" / "er" / "out"
    rc = main(_extract_args(out, tiles, cohort / "slides" / "syn0.tiff", "--clam-pt"))
    assert rc == 2  # the only slide failed
    summary = json.loads((out / "features_tiny-vit" / "summary.json").read_text())
    assert "not a safe slide id" in summary["failed"][0]["error"]
    assert not list(tmp_path.rglob("*escape*"))
    assert not list((out / "features_tiny-vit").glob("*.h5"))
    assert "FAILED syn0" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- 2 id collisions


def test_slide_id_collisions_fail_both_and_name_both(cohort, tmp_path):
    """a/x.tiff and b/x.tiff (and x.svs next to x.tiff) would share outputs: both fail naming each other, the
    other slides go on (exit 3), and no output named x is written."""
    src = tmp_path / "slides"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(cohort / "slides" / "syn0.tiff", src / "a" / "x.tiff")
    shutil.copy(cohort / "slides" / "syn1.tiff", src / "b" / "x.tiff")
    shutil.copy(cohort / "slides" / "syn2.tiff", src / "y.tiff")
    shutil.copy(cohort / "slides" / "syn2.tiff", src / "y.svs")
    from zoomfeat.names import id_collisions

    clashes = id_collisions(sorted(src.rglob("*.tif*")) + [src / "y.svs"])
    assert set(clashes) == {"x", "y"} and str(src / "a" / "x.tiff") in clashes["x"] and "b/x.tiff" in clashes["x"]

    shutil.copy(cohort / "slides" / "syn2.tiff", src / "z.tiff")
    (src / "y.svs").unlink()
    (src / "y.tiff").unlink()
    tiles = tmp_path / "tiles"
    assert main(["tile", str(src), "--out", str(tiles), "--no-progress"]) == 3
    rows = pd.read_csv(tiles / "summary.csv").set_index("slide")
    assert rows.loc["z", "status"] == "done"
    assert rows.loc["x", "status"] == "failed"  # one row per id: the error names both files
    assert "a/x.tiff" in rows.loc["x", "error"] and "b/x.tiff" in rows.loc["x", "error"]
    assert not coords_path(tiles, "x").exists()

    from zoomfeat.encoders import create_encoder
    from zoomfeat.extract import ExtractOptions, extract_cohort

    shutil.copy(coords_path(cohort / "tiles", "syn0"), coords_path(tiles, "x"))  # even with a coordinate file
    rep = extract_cohort(sorted(src.rglob("*.tiff")), create_encoder("tiny-vit"), tmp_path / "feat", tiles,
                         ExtractOptions(mags="20x", workers=0, progress=False))
    assert [r.status for r in rep.results] == ["failed", "failed", "done"] and rep.exit_code == 3
    assert sorted(list_bags(tmp_path / "feat")) == ["z"]


# ---------------------------------------------------------------------------------------------- 3 disk full


def test_disk_full_is_a_one_line_slide_failure_then_the_run_stops(cohort, tmp_path, monkeypatch):
    """ENOSPC on every bag write (mocked at fsync, after the bytes went to the temp file): each slide fails with
    one line, nothing partial stays under a final name, no temp or lock file is left, and after two slides in a
    row the rest is not attempted."""
    from zoomfeat.encoders import create_encoder
    from zoomfeat.extract import ExtractOptions, extract_cohort

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    slides = sorted((cohort / "slides").glob("*.tiff"))
    rep = extract_cohort(slides, create_encoder("tiny-vit"), tmp_path, cohort / "tiles",
                         ExtractOptions(mags="20x", workers=0, progress=False, clam_pt=True))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [r.status for r in rep.results] == ["failed"] * 3 and rep.exit_code == 2
    assert all(r.error == "OSError: [Errno 28] No space left on device" for r in rep.results[:2])
    assert rep.results[2].error.startswith("not attempted: the output volume is full")
    feat = tmp_path / "features_tiny-vit"
    assert not list(feat.rglob("*.h5")) and not list(feat.rglob("*.pt")) and not _leftovers(tmp_path)
    assert json.loads((feat / "summary.json").read_text())["counts"] == {"failed": 3}


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                        "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -rm` (user + mount namespaces) to mount a small tmpfs")
def test_real_full_tmpfs_no_segfault(cohort, tmp_path):
    """A real 1 MiB tmpfs with ~24 KiB free (in a private mount namespace): h5py/HDF5 2.0 used to segfault (exit
    139, stale lock, no summary). Now: exit 3, one FAILED line per full slide, complete bags only, no lock.
    Slow form (`unshare -rm sh` running `python -m zoomfeat`); the default suite runs the same checks in a forked
    child that enters its own user + mount namespace: test_real_full_tmpfs_no_segfault_fast."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    out = mnt / "out"
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs -o size=1m tmpfs {mnt}
        {sys.executable} -c "open('{mnt}/filler', 'wb').write(b'x' * (1024 * 1024 - 24 * 1024))"
        set +e
        {sys.executable} -m zoomfeat {' '.join(_extract_args(out, cohort / 'tiles', cohort / 'slides'))} \
            > {tmp_path}/stdout 2> {tmp_path}/stderr
        echo $? > {tmp_path}/rc
        ls -a {out}/features_tiny-vit {out}/features_tiny-vit/.locks > {tmp_path}/listing 2>&1
        {sys.executable} -c "
import h5py, glob
for p in glob.glob('{out}/features_tiny-vit/*.h5'):
    h5py.File(p, 'r')['features'][:]
print('bags ok')" >> {tmp_path}/listing 2>&1
    """)
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, timeout=300, check=True)
    rc = int((tmp_path / "rc").read_text())
    stdout, listing = (tmp_path / "stdout").read_text(), (tmp_path / "listing").read_text()
    assert rc == 3, (rc, stdout, (tmp_path / "stderr").read_text())
    assert "No space left on device" in stdout and "FAILED" in stdout and "Traceback" not in stdout
    assert "bags ok" in listing and ".lock" not in listing.split(".locks:")[-1]


def _extract_in_a_full_tmpfs(mnt: Path, out: Path, cohort: Path, tmp_path: Path) -> int:
    """In a forked (so single-threaded) child: what `unshare -rm` does (a user namespace mapping us to root, a private
    mount namespace), then a 1 MiB tmpfs at ``mnt`` with ~24 KiB left, then `zoomfeat extract` into it; writes the
    output listing and reads every bag back. Returns the extract's exit status."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    for src, target, fs, flags, data in ((b"none", b"/", None, 16384 | 262144, None),  # MS_REC | MS_PRIVATE
                                         (b"tmpfs", str(mnt).encode(), b"tmpfs", 0, b"size=1m")):
        if libc.mount(src, target, fs, flags, data) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}")
    (mnt / "filler").write_bytes(b"x" * (1024 * 1024 - 24 * 1024))
    rc = main(_extract_args(out, cohort / "tiles", cohort / "slides"))
    sys.stdout.flush()
    feat = out / "features_tiny-vit"
    listing = []
    for d in (feat, feat / ".locks"):
        listing.append(f"{d}:\n" + ("\n".join(sorted(os.listdir(d))) if d.is_dir() else "(absent)") + "\n")
    for bag in feat.glob("*.h5"):
        h5py.File(bag, "r")["features"][:]
    (tmp_path / "listing").write_text("\n".join(listing) + "bags ok\n")
    return rc


@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -rm` (user + mount namespaces) to mount a small tmpfs")
def test_real_full_tmpfs_no_segfault_fast(cohort, tmp_path):
    """Fast twin of the test above: the same real full tmpfs, mounted by a forked child in its own user + mount
    namespace (a segfault would show as returncode -11), and the same checks."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = run_forked(lambda: _extract_in_a_full_tmpfs(mnt, mnt / "out", cohort, tmp_path), tmp_path / "_fork",
                   {"WANDB_MODE": "disabled"})
    rc, stdout = r.returncode, r.stdout
    listing = (tmp_path / "listing").read_text() if rc >= 0 else ""
    assert rc == 3, (rc, stdout, r.stderr)
    assert "No space left on device" in stdout and "FAILED" in stdout and "Traceback" not in stdout
    assert "bags ok" in listing and ".lock" not in listing.split(".locks:")[-1]


# ---------------------------------------------------------------------------------------------- 4 kills


def _forked(args: list[str], tmp_path: Path, **env) -> Forked:
    """`python -m zoomfeat ARGS` in a forked child (a real process, a real SIGKILL; torch not imported again)."""
    return run_forked(zoomfeat_main(args), tmp_path / "_fork", {"WANDB_MODE": "disabled", **env})


def _kill_between_rename_and_lock_release(cohort, tmp_path, verb, run):
    slide = cohort / "slides" / "syn0.tiff"
    args = (_extract_args(tmp_path, cohort / "tiles", slide) if verb == "extract"
            else ["tile", str(slide), "--out", str(tmp_path), "--no-progress"])
    r = run(args, ZOOMFEAT_KILL_AT="cohort:before_unlock")
    assert r.returncode == -9
    done = bag_path(tmp_path, "tiny-vit", "syn0") if verb == "extract" else coords_path(tmp_path, "syn0")
    assert done.exists()
    assert main(args) == 0
    summary = pd.read_csv(done.parent.parent / "summary.csv" if verb == "tile" else done.parent / "summary.csv")
    assert summary["status"].tolist() == ["skipped"]
    assert not _leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["extract", "tile"])
def test_kill_between_rename_and_lock_release(cohort, tmp_path, verb):
    """SIGKILL right after the output's rename, before the lock release: the rerun neither sees a held lock nor
    leaves the lock file behind, and the slide counts as done. Slow form (`python -m zoomfeat` subprocess); the
    default suite runs the same checks on a forked process: ..._fast below."""
    _kill_between_rename_and_lock_release(cohort, tmp_path, verb, _run)


@pytest.mark.parametrize("verb", ["extract", "tile"])
def test_kill_between_rename_and_lock_release_fast(cohort, tmp_path, verb):
    """Fast twin of the test above: the killed run is a forked child of this process (real SIGKILL, real flock)."""
    _kill_between_rename_and_lock_release(cohort, tmp_path, verb, lambda args, **env: _forked(args, tmp_path, **env))


def _kill_between_pt_and_bag(cohort, tmp_path, run):
    slide = cohort / "slides" / "syn1.tiff"
    args = _extract_args(tmp_path, cohort / "tiles", slide, "--clam-pt")
    assert run(args, ZOOMFEAT_KILL_AT="extract:after_pt").returncode == -9
    feat = tmp_path / "features_tiny-vit"
    assert (feat / "pt_files" / "syn1.pt").exists() and not (feat / "syn1.h5").exists()
    assert main(args) == 0
    np.testing.assert_array_equal(load_bag(feat / "pt_files" / "syn1.pt").features, load_bag(feat / "syn1.h5").features)

    other = tmp_path / "other"  # a bag without its .pt (made without --clam-pt) is not "done" for --clam-pt
    assert main(_extract_args(other, cohort / "tiles", slide)) == 0
    assert main(_extract_args(other, cohort / "tiles", slide, "--clam-pt")) == 0
    assert pd.read_csv(other / "features_tiny-vit" / "summary.csv")["status"].tolist() == ["done"]
    assert (other / "features_tiny-vit" / "pt_files" / "syn1.pt").exists()


@pytest.mark.slow
def test_kill_between_pt_and_bag_keeps_both_outputs(cohort, tmp_path):
    """--clam-pt: the .pt is written before the bag (the completion marker), and "done" needs both; a kill in
    between, or a bag from a run without --clam-pt, is redone so the .pt is never lost. Slow form (`python -m
    zoomfeat` subprocess); the default suite runs the same checks on a forked process: ..._fast below."""
    _kill_between_pt_and_bag(cohort, tmp_path, _run)


def test_kill_between_pt_and_bag_keeps_both_outputs_fast(cohort, tmp_path):
    """Fast twin of the test above: the killed run is a forked child of this process (a real SIGKILL)."""
    _kill_between_pt_and_bag(cohort, tmp_path, lambda args, **env: _forked(args, tmp_path, **env))


ORPHAN_WATCH = textwrap.dedent("""
    import ctypes, os, subprocess, sys, time
    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of the child are re-parented to us
    rc = subprocess.call(sys.argv[1:])
    def alive():
        out = []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                st = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(st[1]) == os.getpid() and st[0] != "Z":
                out.append(int(d))
        return out
    t0 = time.time()
    while alive() and time.time() - t0 < 15:
        time.sleep(0.2)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
    left = alive()
    for pid in left:
        os.kill(pid, 9)
    print(f"rc={rc} orphans={len(left)}")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_CHILD_SUBREAPER")
def test_killed_tile_pool_leaves_no_orphans(cohort, tmp_path):
    """`tile --workers 2` SIGKILLed after its first slide: pool workers and the resource tracker exit too
    (before: three processes ran on indefinitely)."""
    watch = tmp_path / "watch.py"
    watch.write_text(ORPHAN_WATCH)
    r = subprocess.run([sys.executable, str(watch), sys.executable, "-m", "zoomfeat", "tile", str(cohort / "slides"),
                        "--out", str(tmp_path / "t"), "--workers", "2", "--no-progress"],
                       env={**ENV, "ZOOMFEAT_KILL_AT": "tile:pool_running"}, capture_output=True, text=True,
                       timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "rc=-9 orphans=0", r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------- 5 locks


def _fake_cohort(tmp_path: Path, names=("a", "b", "c")):
    slides = [tmp_path / f"{n}.svs" for n in names]
    out = tmp_path / "out"
    out.mkdir()
    is_done = lambda p: (out / f"{p.stem}.done").exists()  # noqa: E731

    def process(p):
        (out / f"{p.stem}.done").write_text("x")

    return slides, out, is_done, process


def test_locked_slide_is_not_done_and_exit_3(tmp_path):
    slides, out, is_done, process = _fake_cohort(tmp_path)
    holder = SlideLock(tmp_path / "locks" / "b.lock")  # another process (another open file: flock conflicts)
    assert holder.acquire()
    rep = run_cohort(slides, process, is_done, lock_dir=tmp_path / "locks", progress=False)
    assert [r.status for r in rep.results] == ["done", "locked", "done"] and rep.exit_code == 3
    rep.write(out)
    assert json.loads((out / "summary.json").read_text())["locked"] == ["b"]
    assert not is_done(slides[1])
    holder.release()
    rep = run_cohort(slides, process, is_done, lock_dir=tmp_path / "locks", progress=False)
    assert [r.status for r in rep.results] == ["skipped", "done", "skipped"] and rep.exit_code == 0


def test_lock_wait_lets_a_holder_in_another_process_finish(tmp_path, monkeypatch):
    """With ZOOMFEAT_LOCK_WAIT the end-of-run retry waits for the holder (here a subprocess that holds b's lock
    for 2 s, then finishes b) instead of reporting b locked."""
    slides, out, is_done, process = _fake_cohort(tmp_path)
    code = ("import sys, time, pathlib; from zoomfeat.io import SlideLock; l = SlideLock(sys.argv[1]); "
            "assert l.acquire(); print('held', flush=True); time.sleep(2); "
            "pathlib.Path(sys.argv[2]).write_text('x'); l.release()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "locks" / "b.lock"), str(out / "b.done")],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setenv("ZOOMFEAT_LOCK_WAIT", "60")
    rep = run_cohort(slides, process, is_done, lock_dir=tmp_path / "locks", progress=False)
    holder.wait(timeout=60)
    assert [r.status for r in rep.results] == ["done", "skipped", "done"] and rep.exit_code == 0


def test_locked_slide_finished_by_its_holder_before_exit_counts_as_skipped(tmp_path):
    slides, out, is_done, process = _fake_cohort(tmp_path)
    holder = SlideLock(tmp_path / "locks" / "a.lock")
    assert holder.acquire()

    def proc(p):  # while we work on b and c, the holder of a finishes it and lets go
        process(p)
        if p.stem == "c":
            (out / "a.done").write_text("x")
            holder.release()

    rep = run_cohort(slides, proc, is_done, lock_dir=tmp_path / "locks", progress=False)
    assert [r.status for r in rep.results] == ["skipped", "done", "done"] and rep.exit_code == 0


def test_dead_holder_lock_is_taken_and_done_rechecked_after_acquiring(tmp_path):
    slides, out, is_done, process = _fake_cohort(tmp_path)
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "a.lock").write_text("")  # empty file of a crashed holder: not held, so taken; then removed
    (locks / "b.lock").write_text('{"pid": 1, "host": "elsewhere"}')  # another host's old-format lock: not held
    calls = {"n": 0}

    def done_after_first_check(p):  # another process finishes c between our check and our lock
        if p.stem == "c":
            calls["n"] += 1
            return calls["n"] > 1
        return is_done(p)

    ran = []
    rep = run_cohort(slides, lambda p: ran.append(p.stem) or process(p), done_after_first_check, lock_dir=locks,
                     progress=False)
    assert [r.status for r in rep.results] == ["done", "done", "skipped"] and ran == ["a", "b"]
    assert not list(locks.glob("*.lock"))
    a, b = SlideLock(locks / "x.lock"), SlideLock(locks / "x.lock")
    assert a.acquire() and not b.acquire()
    b.release()  # not the owner: a no-op
    assert not SlideLock(locks / "x.lock").acquire()
    a.release()
    assert SlideLock(locks / "x.lock").acquire()


def test_summaries_of_concurrent_processes_are_merged(tmp_path):
    from zoomfeat.cohort import CohortReport, SlideResult

    CohortReport([SlideResult("a", "done"), SlideResult("b", "locked")]).write(tmp_path)
    CohortReport([SlideResult("a", "locked"), SlideResult("b", "done"), SlideResult("c", "failed", error="E")]).write(
        tmp_path)
    rows = pd.read_csv(tmp_path / "summary.csv").set_index("slide")["status"].to_dict()
    assert rows == {"a": "done", "b": "done", "c": "failed"}
    info = json.loads((tmp_path / "summary.json").read_text())
    assert info["counts"] == {"done": 2, "failed": 1} and info["exit_code"] == 3


# ---------------------------------------------------------------------------------------------- 6 one-line errors


class _Evil:
    """Unpickling this runs a shell command that creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    files = {"evil": tmp_path / "evil.pt", "empty": tmp_path / "empty.pt", "truncated": tmp_path / "trunc.pt",
             "legacy_evil": tmp_path / "legacy.pt"}
    torch.save({"w": torch.zeros(3), "x": _Evil(marker)}, files["evil"])
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["legacy_evil"].write_bytes(pickle.dumps(_Evil(marker)))
    return files


@pytest.mark.parametrize("encoder", ["tiny-vit", "uni", "phikon", "custom"])
def test_weights_loaders_refuse_in_one_line(tmp_path, encoder):
    from zoomfeat.encoders import create_encoder

    kw = {"model": "torch.nn:Identity", "dim": 3} if encoder == "custom" else {}
    for kind, f in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as ei:
            create_encoder(encoder, weights=f, **kw)
        msg = str(ei.value)
        assert msg.startswith(f"refusing to load {f} (not a tensor-only checkpoint)") and "\n" not in msg, msg
        assert "weights_only=False" not in msg
    assert not (tmp_path / "pwned").exists()


def test_evil_weights_and_ssl_weights_on_the_cli(cohort, tmp_path, capsys):
    evil = _bad_files(tmp_path)["evil"]
    slide = cohort / "slides" / "syn0.tiff"
    assert main(_extract_args(tmp_path / "o1", cohort / "tiles", slide, "--weights", str(evil))) == 2
    assert main(["extract", str(slide), "--tiles", str(cohort / "tiles"), "--encoder", "zoomldm", "--weights",
                 str(MICRO_LDM / "weights.ckpt"), "--ssl-encoder", "tiny-vit", "--ssl-weights", str(evil),
                 "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("refusing to load" in e and "not a tensor-only checkpoint" in e for e in err)
    assert not (tmp_path / "pwned").exists()


def test_unreadable_pt_bags_are_skipped_and_listed(tmp_path):
    """Malicious, zero-byte and truncated TRIDENT .pt bags: skipped with 'unreadable bag …', listed in the skipped
    list (skipped.csv in `mil cv` / `compare`), never an abort or code execution."""
    from mil.data import build_cohort, load_labels

    rng = np.random.default_rng(0)
    bags = {}
    for i in range(6):
        bags[f"s{i}"] = tmp_path / f"s{i}.pt"
        torch.save(torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32)), bags[f"s{i}"])
    for sid, f in zip(("s3", "s4", "s5"), _bad_files(tmp_path).values()):
        shutil.copy(f, bags[sid])
    df, skipped = load_labels(pd.DataFrame({"slide": list(bags), "label": [0, 1] * 3}), "binary", "label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = build_cohort(df, bags, "binary", "label", skipped=skipped)
    assert c.slides == ["s0", "s1", "s2"]
    reasons = dict(c.skipped)
    assert set(reasons) == {"s3", "s4", "s5"}
    assert all(r.startswith("unreadable bag") and "\n" not in r for r in reasons.values())
    assert not (tmp_path / "pwned").exists()


def test_corrupt_tiles_under_dataloader_workers_give_one_line(tmp_path, capsys):
    """Pixels that cannot be decoded, read by 2 DataLoader workers: the summary and the FAILED line hold the
    worker's one-line error, not its traceback."""
    from zoomfeat.slides.coords import TileGrid, write_coords

    coords = np.zeros((8, 2), np.int64)
    grid = TileGrid(slide="unreadable", coords=coords, patch_size=16, patch_size_level0=16, target_mpp=0.5,
                    mpp_level0=0.5, mpp_source="given", scales={0: (coords, 16)})
    attrs = {"patch_size": 16, "patch_size_level0": 16, "target_mpp": 0.5, "mpp_level0": 0.5, "mpp_source": "given"}
    write_coords(coords_path(tmp_path / "tiles", "unreadable"), grid, {0: attrs}, {})
    rc = main(["extract", str(SLIDES / "unreadable.svs"), "--tiles", str(tmp_path / "tiles"), "--encoder", "tiny-vit",
               "--mags", "20x", "--workers", "2", "--batch-size", "1", "--out", str(tmp_path / "out"),
               "--no-progress"])
    assert rc == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = (tmp_path / "out" / "features_tiny-vit" / "summary.csv").read_text().strip().splitlines()
    assert len(lines) == 2 and "SlideReadError" in lines[1] and "reading pixels failed" in lines[1]


# ---------------------------------------------------------------------------------------------- 7 labels


def test_empty_patient_cells_are_an_error_naming_rows():
    from mil.data import load_labels

    df = pd.DataFrame({"slide": ["a", "b", "c"], "patient": ["p1", None, " "], "label": [0, 1, 0]})
    with pytest.raises(ValueError, match=r"empty 'patient' in 2 row\(s\): row 3 \(b\), row 4 \(c\)"):
        load_labels(df, "binary", "label")


def test_non_finite_survival_times_are_an_error(tmp_path):
    from mil.data import load_labels

    csv = tmp_path / "labels.csv"
    csv.write_text("slide,patient,time,event\na,p1,10,1\nb,p2,inf,0\nc,p3,5,1\n")
    with pytest.raises(ValueError, match=r"non-finite .* row 3 \(b: time=inf"):
        load_labels(csv, "survival")


def test_inner_split_failure_names_the_settings():
    from mil.splits import make_splits

    slides = [f"s{i}" for i in range(8)]
    with pytest.raises(ValueError) as ei:
        make_splits(slides, slides, [i % 2 for i in range(8)], n_folds=3, seed=0, val_fraction=0.2)
    msg = str(ei.value)
    assert "val_fraction=0.2" in msg and "n_folds=3" in msg and "1: 2 patient(s)" in msg and "val_fraction: 0" in msg
    df = make_splits(slides, slides, [i % 2 for i in range(8)], n_folds=3, seed=0, val_fraction=0.5)
    assert set(df["split"]) == {"train", "val", "test"}


# ---------------------------------------------------------------------------------------------- 8 config audit


def test_training_build_without_ssl_encoder_names_the_key(tmp_path):
    from zoomfeat.train.loop import ensure_dataset

    cfg = {"dataset": {"build": {"synthetic": {"n_slides": 1}}}}
    with pytest.raises(ValueError, match=r"dataset\.build\.ssl_encoder is missing"):
        ensure_dataset(cfg, tmp_path, ldm=None, progress=False)
    assert not (tmp_path / "cohort").exists()  # refused before any work


def test_val_fraction_zero_warns():
    from mil.folds import run_folds
    from mil.data import build_cohort, load_labels
    from mil.splits import make_splits

    rng = np.random.default_rng(0)
    slides = [f"s{i}" for i in range(6)]
    bags = {s: rng.normal(size=(4, 3)).astype(np.float32) for s in slides}
    df, skipped = load_labels(pd.DataFrame({"slide": slides, "label": [0, 1] * 3}), "binary", "label")
    c = build_cohort(df, bags, "binary", "label", skipped=skipped)
    splits = make_splits(c.slides, c.patients, c.strata, n_folds=2, seed=0, val_fraction=0)
    with pytest.warns(UserWarning, match="no validation patients"):
        run_folds(c, splits, model="abmil", epochs=1, progress=False, wandb=False, embed_dim=4, attn_dim=4)


def test_checkpoint_mismatch_lists_every_tensor():
    from zoomfeat.ldm.official import CheckpointMismatchError, check_against_model

    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(40)])
    converted = {k: torch.zeros(3, 3) if k.endswith("weight") else v for k, v in model.state_dict().items()}
    converted.update({f"extra.{i}": torch.zeros(1) for i in range(25)})
    del converted["39.bias"], converted["38.bias"]
    with pytest.raises(CheckpointMismatchError) as ei:
        check_against_model("unet", converted, model)
    msg = str(ei.value)
    assert "shape mismatches (40)" in msg and all(f"{i}.weight:" in msg for i in range(40))
    assert all(f"extra.{i}" in msg for i in range(25)) and "38.bias" in msg and "39.bias" in msg and "…" not in msg


def test_mil_cv_skips_unreadable_pt_bags_end_to_end(tmp_path):
    """`zoomfeat mil cv` over TRIDENT-style .pt bags with a malicious, a zero-byte and a truncated one: the run
    finishes, those slides are in skipped.csv as 'unreadable bag …', and no pickled code runs."""
    from mil.synthetic import write_bags

    h5_dir, labels = write_bags(tmp_path / "h5", n_slides=18, dim=8, seed=0)
    pt_dir = tmp_path / "pt"
    pt_dir.mkdir()
    for p in sorted(h5_dir.glob("*.h5")):
        torch.save(torch.from_numpy(load_bag(p).features), pt_dir / f"{p.stem}.pt")
    for sid, f in zip(("slide_015", "slide_016", "slide_017"), _bad_files(tmp_path).values()):
        shutil.copy(f, pt_dir / f"{sid}.pt")
    out = tmp_path / "cv"
    assert main(["mil", "cv", "--config", str(ROOT / "configs/mil/abmil_hrd.yaml"), "--out", str(out),
                 f"labels={labels}", f"bags={pt_dir}", "hparams.embed_dim=8", "hparams.attn_dim=4",
                 "hparams.epochs=1", "hparams.min_epochs=0", "hparams.progress=false",
                 "n_folds=2"]) == 0
    skipped = pd.read_csv(out / "skipped.csv").set_index("slide")["reason"]
    assert sorted(skipped.index) == ["slide_015", "slide_016", "slide_017"]
    assert all(r.startswith("unreadable bag") for r in skipped)
    assert not (tmp_path / "pwned").exists()


def _two_concurrent_runs(cohort, tmp_path, start) -> None:
    outs = start(_extract_args(tmp_path, cohort / "tiles", cohort / "slides"), {"ZOOMFEAT_LOCK_WAIT": "120"})
    assert [rc for rc, _, _ in outs] == [0, 0], outs
    done = sum(int(o.split("done: ")[1].split(")")[0].split(",")[0]) if "done: " in o else 0 for _, o, _ in outs)
    assert done == 3, outs
    rows = pd.read_csv(tmp_path / "features_tiny-vit" / "summary.csv")
    assert sorted(rows["slide"]) == ["syn0", "syn1", "syn2"] and set(rows["status"]) <= {"done", "skipped"}
    assert not _leftovers(tmp_path)


@pytest.mark.slow
def test_two_concurrent_extract_runs_share_the_work(cohort, tmp_path):
    """Two identical `extract` runs on one output folder at once: every slide is computed exactly once in total,
    both exit 0 (ZOOMFEAT_LOCK_WAIT lets each wait for the other's last slide), and the summary has every slide.
    Slow form (two `python -m zoomfeat` subprocesses); the default suite runs the same checks on two forked
    processes: test_two_concurrent_extract_runs_share_the_work_fast."""

    def start(args, env):
        procs = [subprocess.Popen([sys.executable, "-m", "zoomfeat", *args], env={**ENV, **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]

    _two_concurrent_runs(cohort, tmp_path, start)


def test_two_concurrent_extract_runs_share_the_work_fast(cohort, tmp_path):
    """Fast twin of the test above: the two runs are forked children of this process, started together."""

    def start(args, env):
        kids = [run_forked(zoomfeat_main(args), tmp_path.parent / f"{tmp_path.name}_fork", env, wait=False)
                for _ in range(2)]
        return [(r.returncode, r.stdout, r.stderr) for r in (k.wait() for k in kids)]

    _two_concurrent_runs(cohort, tmp_path, start)
