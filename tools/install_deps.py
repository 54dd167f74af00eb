"""Install zoomfeat's dependencies into the interpreter running this script (``make install``).

uv installs the same packages as pip about six times faster (parallel download and unpacking: ≈ 30 s instead of
≈ 3 min for the CUDA torch build and its nvidia-* wheels; 90 s with the bytecode compiled, as pip does), so it is
used when ``pip install uv`` works; pip is the fallback. uv does not read pip's configuration, so the indexes,
find-links and constraints pip would use on this machine are passed on, and ``unsafe-best-match`` makes uv pick,
like pip, the best version across all indexes.
Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys

TORCH = ["torch>=2.4", "torchvision>=0.19"]  # a matching pair first (README: "Install")
PROJECT = ["-e", ".[dev]"]


def pip_config() -> dict[str, str]:
    """pip's effective settings (``pip config list``: files, then ``PIP_*`` environment variables win)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    files, env = {}, {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, name = key.partition(".")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        (env if section == ":env:" else files)[name] = str(value)
    return {**files, **env}


def uv_args(cfg: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv flags (and environment) equivalent to pip's settings."""
    args, env = ["--index-strategy", "unsafe-best-match"], {}
    if cfg.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if cfg.get("index-url"):
        args += ["--index-url", cfg["index-url"]]
    for flag, name in (("--extra-index-url", "extra-index-url"), ("--find-links", "find-links"),
                       ("--constraint", "constraint"), ("--allow-insecure-host", "trusted-host")):
        for value in cfg.get(name, "").split():
            args += [flag, value]
    if cfg.get("cert"):
        env["SSL_CERT_FILE"] = cfg["cert"]
    return args, env


def run(cmd: list[str], env: dict[str, str] | None = None) -> bool:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, env={**os.environ, **(env or {})}).returncode == 0


def with_uv() -> bool:
    if not run([sys.executable, "-m", "pip", "install", "-q", "uv"]):
        return False
    uv = os.path.join(os.path.dirname(sys.executable), "uv")
    args, env = uv_args(pip_config())
    base = [uv, "pip", "install", "-q", "--compile-bytecode", "--python", sys.executable, *args]
    return run([*base, *TORCH], env) and run([*base, *PROJECT], env)


def with_pip() -> bool:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    return run([*pip, "--upgrade", "pip"]) and run([*pip, *TORCH]) and run([*pip, *PROJECT])


def main() -> int:
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: "-e ." means it
    if os.environ.get("ZOOMFEAT_INSTALLER", "uv") == "uv":
        if with_uv():
            return 0
        print("install_deps: uv did not work here; installing with pip instead", file=sys.stderr)
    return 0 if with_pip() else 1


if __name__ == "__main__":
    sys.exit(main())
