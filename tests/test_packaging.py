"""Configs ship inside the package: a non-editable install, run from a folder outside the checkout, finds every
default (`zoomfeat tile` with no --config, `zoomfeat compare --help`), and the repository's ``configs/`` is the same
set of files as the packaged one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SLIDES

ROOT = Path(__file__).resolve().parents[1]


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_repo_configs_are_the_packaged_configs():
    """The top-level configs/ is a link to the packaged folder (the same files); where a checkout made it a plain
    folder (no symlinks), every file must equal the packaged one."""
    from zoomfeat.config import CONFIG_DIR

    assert CONFIG_DIR.is_relative_to(ROOT / "zoomfeat"), CONFIG_DIR
    repo = ROOT / "configs"
    packaged = _tree(CONFIG_DIR)
    assert "tiling.yaml" in packaged and "encoders/weights.yaml" in packaged
    if repo.is_symlink():
        assert repo.resolve() == CONFIG_DIR.resolve(), f"configs/ links to {repo.resolve()}, not {CONFIG_DIR}"
    else:
        copy = _tree(repo)
        assert copy.keys() == packaged.keys()
        assert all(copy[k] == packaged[k] for k in copy), [k for k in copy if copy[k] != packaged[k]]


def test_relative_config_paths_resolve_in_the_package(tmp_path, monkeypatch):
    from zoomfeat.config import load_config, load_yaml
    from zoomfeat.slides.tiling import TilingConfig

    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_yaml("configs/tiling.yaml") == load_yaml("tiling.yaml")
    # the shipped tiling.yaml documents the defaults: it must not drift from the dataclass
    assert load_config(TilingConfig, "tiling.yaml") == TilingConfig()
    with pytest.raises(ValueError, match="unknown option"):
        load_config(TilingConfig, {"min_tisue": 0.3})


def _copy_sources(src: Path) -> None:
    """The files a wheel is built from, copied (setuptools writes build/ beside them; the checkout stays untouched)."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("zoomfeat", "mil"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)


def test_wheel_runs_from_outside_the_checkout_fast(tmp_path, monkeypatch):
    """The default twin of test_wheel_install_runs_from_outside_the_checkout: the wheel built in this process by the
    same PEP 517 backend pip calls (setuptools.build_meta), unpacked into a bare folder (what `pip install --target`
    does with a pure-Python wheel), and one interpreter started elsewhere with only that folder on its path: it
    imports the installed copy, finds the packaged configs, tiles a slide with the default tiling config and shows
    `compare --help`."""
    import zipfile

    from setuptools import build_meta

    wheels, target, work, src = (tmp_path / n for n in ("wheels", "site", "elsewhere", "src"))
    work.mkdir()
    wheels.mkdir()
    _copy_sources(src)
    monkeypatch.chdir(src)
    name = build_meta.build_wheel(str(wheels))
    with zipfile.ZipFile(wheels / name) as zf:
        listed = set(zf.namelist())
        zf.extractall(target)
    assert {"zoomfeat/configs/tiling.yaml", "zoomfeat/configs/encoders/weights.yaml",
            "zoomfeat/viewer/static/openseadragon/openseadragon.min.js"} <= listed
    code = ("import contextlib, io, sys, zoomfeat, zoomfeat.config as c\n"
            "print(zoomfeat.__file__); print(c.CONFIG_DIR)\n"
            "from zoomfeat.cli import main\n"
            f"rc = main(['tile', {str(SLIDES / 'cmu_small_region.svs')!r}, '--out', 'tiles', '--no-progress'])\n"
            "assert rc == 0, rc\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n"
            "        main(['compare', '--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "assert '--config' in buf.getvalue(), buf.getvalue()\n")
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    where = proc.stdout.split()[:2]
    assert all(line.startswith(str(target)) for line in where), proc.stdout
    assert (work / "tiles" / "coords" / "cmu_small_region.h5").is_file()


@pytest.mark.slow
def test_wheel_install_runs_from_outside_the_checkout(tmp_path):
    """Build the wheel (non-editable), install it into a bare target folder and run the CLI from elsewhere (slow:
    pip twice and three interpreters; test_wheel_runs_from_outside_the_checkout_fast covers it by default)."""
    wheels, target, work, src = (tmp_path / n for n in ("wheels", "site", "elsewhere", "src"))
    work.mkdir()
    _copy_sources(src)  # build from a copy of the sources
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], check=True,
                   cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("zoomfeat-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300)
    assert (target / "zoomfeat" / "configs" / "tiling.yaml").is_file()
    # the installed copy, not the checkout: PYTHONPATH puts it before the editable install's path entry
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import zoomfeat, zoomfeat.config as c; print(zoomfeat.__file__); print(c.CONFIG_DIR)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    tile = run("-m", "zoomfeat", "tile", str(SLIDES / "cmu_small_region.svs"), "--out", "tiles", "--no-progress")
    assert tile.returncode == 0, tile.stdout + tile.stderr
    assert (work / "tiles" / "coords" / "cmu_small_region.h5").is_file()
    helped = run("-m", "zoomfeat", "compare", "--help")
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stderr
