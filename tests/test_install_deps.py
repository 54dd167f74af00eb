"""tools/install_deps.py (`make install`): uv gets the indexes, find-links and constraints pip would use here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("install_deps", ROOT / "tools" / "install_deps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PIP_CONFIG_LIST = """:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/ignored/because/env/wins'
site.index-url='https://mirror.example/simple'
"""


def test_pip_settings_become_uv_flags(monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, PIP_CONFIG_LIST, ""))
    cfg = mod.pip_config()
    assert cfg["find-links"] == "/opt/wheels"  # PIP_* environment beats the files, as in pip
    args, env = mod.uv_args(cfg)
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]  # pip's "best version over every index"
    pairs = list(zip(args[2::2], args[3::2]))
    assert pairs == [("--index-url", "https://mirror.example/simple"),
                     ("--extra-index-url", "file:///opt/pypi/simple"),
                     ("--extra-index-url", "file:///opt/pypi-more/simple"),
                     ("--find-links", "/opt/wheels"),
                     ("--constraint", "/etc/xdg/pip/constraints.txt")]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    assert mod.uv_args({"no-index": "true"})[0][2:] == ["--no-index"]


def test_pip_config_of_this_interpreter_parses():
    """The real `pip config list` of the running interpreter: every value a string (quotes removed)."""
    cfg = _module().pip_config()
    assert all(isinstance(v, str) and not v.startswith("'") for v in cfg.values())


def test_falls_back_to_pip_when_uv_fails(monkeypatch):
    mod = _module()
    calls = []

    def fake_run(cmd, env=None):
        calls.append(cmd)
        return "uv" not in cmd  # `pip install uv` fails (an index without uv)

    monkeypatch.setattr(mod, "run", fake_run)
    monkeypatch.setattr(mod.os, "chdir", lambda p: None)
    monkeypatch.delenv("ZOOMFEAT_INSTALLER", raising=False)
    assert mod.main() == 0
    assert calls[0][-1] == "uv" and calls[-1][-2:] == ["-e", ".[dev]"] and calls[-2][-2:] == mod.TORCH
    assert all(c[:3] == [sys.executable, "-m", "pip"] for c in calls)
