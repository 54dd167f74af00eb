"""The walls as tests: the import-linter contracts of pyproject.toml hold with no exception (one ``layers`` contract
over all of zoomfeat and mil, naming every module, the floor included: no circle, no import up a floor, only the
entry point imports the CLI), and three source checks read with ``ast``: no function over 80 lines, no private name
used across modules, no "zoomldm" string literal outside the encoder that owns the name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MAX_LINES = 80
FIRST_PARTY = ("zoomfeat", "mil")
ZOOMLDM_HOME = Path("zoomfeat/encoders/zoomldm.py")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT)


def test_import_contracts_hold_without_exceptions():
    pytest.importorskip("importlinter")
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    excused = {c["name"]: c["ignore_imports"] for c in contracts if c.get("ignore_imports")}
    assert not excused, f"contracts with ignore_imports left: {excused}"
    exe = shutil.which("lint-imports", path=str(ROOT / ".venv" / "bin")) or shutil.which("lint-imports")
    cmd = [exe] if exe else [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                                                    "lint_imports_command()"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def long_functions(paths: list[Path], limit: int = MAX_LINES) -> list[str]:
    """``file:line name (n lines)`` for every def (nested ones too) longer than ``limit`` lines."""
    out = []
    for path in paths:
        for node in ast.walk(_parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((str(_rel(path)), node.lineno, f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)"))
    return [o[2] for o in sorted(out)]


def test_no_function_longer_than_80_lines():
    offenders = long_functions(_sources(*FIRST_PARTY))
    assert not offenders, f"{len(offenders)} function(s) over {MAX_LINES} lines:\n" + "\n".join(offenders)


def _module_name(path: Path) -> str:
    parts = list(_rel(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_first_party(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in FIRST_PARTY


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str | None:
    if not node.level:
        return node.module
    pkg = here.split(".") if is_package else here.split(".")[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    return ".".join(pkg + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(paths: list[Path]) -> list[str]:
    """``file:line`` for ``from first_party import _x`` and ``module._x`` on a first-party module bound by
    ``import a.b [as m]`` or ``from a import b`` (b a module); a module's own privates are its business."""
    out = []
    for path in paths:
        tree = _parse(path)
        here, is_pkg = _module_name(path), path.name == "__init__.py"
        modules: dict[str, str] = {}  # local name -> first-party module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _is_first_party(a.name):
                        modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(node, here, is_pkg)
                if not _is_first_party(src):
                    continue
                for a in node.names:
                    if _private(a.name) and src != here:
                        out.append(f"{_rel(path)}:{node.lineno} from {src} import {a.name}")
                    elif _is_module(f"{src}.{a.name}"):
                        modules[a.asname or a.name] = f"{src}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in modules and modules[base.id] != here:
                    dotted = ".".join([base.id, *reversed(chain)])
                    out.append(f"{_rel(path)}:{node.lineno} {dotted} (module {modules[base.id]})")
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1].split()[0]), s))


def test_no_private_name_used_across_modules():
    offenders = private_uses(_sources(*FIRST_PARTY, "benchmarks"))
    assert not offenders, f"{len(offenders)} private name(s) used across modules:\n" + "\n".join(offenders)


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def zoomldm_literals(paths: list[Path]) -> list[str]:
    """``file:line`` of every code string constant equal to "zoomldm" (docstrings excluded)."""
    out = []
    for path in paths:
        if _rel(path) == ZOOMLDM_HOME:
            continue
        tree = _parse(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "zoomldm" and id(node) not in docs:
                out.append((str(_rel(path)), node.lineno))
    return [f"{p}:{n}" for p, n in sorted(set(out))]


def test_no_zoomldm_string_literal_outside_its_encoder():
    offenders = zoomldm_literals(_sources(*FIRST_PARTY))
    assert not offenders, ('"zoomldm" literals (use zoomfeat.encoders.zoomldm.ZOOMLDM):\n' + "\n".join(offenders))


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """Each check flags a planted offender (and leaves the allowed forms alone), so a pass means something."""
    import tests.test_architecture as arch

    monkeypatch.setattr(arch, "ROOT", tmp_path)
    pkg = tmp_path / "mil"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _hidden():\n    return 1\n\n\ndef ok():\n    return _hidden()\n")
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (pkg / "b.py").write_text(
        '"""zoomldm"""\nimport mil.a\nimport mil.a as alias\nfrom mil import a\nfrom mil.a import _hidden\n'
        'from mil.a import ok\n\n\ndef long():\n' + body + '\n    return mil.a._hidden(), alias._hidden(), '
        'a._hidden(), ok.__name__, "zoomldm", f"features_zoomldm"\n')
    paths = [pkg / "a.py", pkg / "b.py"]
    assert arch.long_functions(paths) == ["mil/b.py:9 long (82 lines)"]
    found = arch.private_uses(paths)
    assert found == ["mil/b.py:5 from mil.a import _hidden", "mil/b.py:90 a._hidden (module mil.a)",
                     "mil/b.py:90 alias._hidden (module mil.a)", "mil/b.py:90 mil.a._hidden (module mil)"], found
    assert arch.zoomldm_literals(paths) == ["mil/b.py:90"]


def _house(contracts: list[dict]) -> dict:
    return next(c for c in contracts if c["type"] == "layers" and "zoomfeat.cli" in c["layers"])


def layer_names(layers: list[str]) -> list[str]:
    """Every module a ``layers`` list names (``a | b``, ``a : b``, optional ``(a)``), in order."""
    return [n.strip().strip("()") for layer in layers for n in layer.replace(":", "|").split("|")]


def unnamed_modules(root: Path, layers: list[str]) -> list[str]:
    """Top-level modules and packages of zoomfeat and mil that no layer names (the root packages' ``__init__``
    faces are no layer), plus names listed twice."""
    named = layer_names(layers)
    present = {f"{pkg}.{p.stem if p.is_file() else p.name}" for pkg in FIRST_PARTY for p in (root / pkg).iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    twice = sorted({n for n in named if named.count(n) > 1})
    return sorted(present - set(named)) + [f"{n} (twice)" for n in twice]


def test_layers_name_every_module(tmp_path):
    """The house contract names every top-level module and package of zoomfeat and of mil: a new module must be
    given its floor, or the contract would silently not cover it. The check flags a planted unnamed module."""
    import tomllib

    layers = _house(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])["layers"]
    missing = unnamed_modules(ROOT, layers)
    assert not missing, f"give these a layer in pyproject.toml's house contract: {missing}"
    for pkg in FIRST_PARTY:
        (tmp_path / pkg / "sub").mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / "sub" / "__init__.py").write_text("")
        (tmp_path / pkg / "a.py").write_text("")
    assert unnamed_modules(tmp_path, ["zoomfeat.a", "(zoomfeat.sub) : mil.a | mil.a"]) == ["mil.sub", "mil.a (twice)"]


def test_cli_start_up_imports_no_torch():
    """`zoomfeat --help` and every verb but those that need the encoder registry build their parser without torch
    (0.05 s instead of 1.4 s): `extract` loads its encoder options only when it runs. One fresh interpreter in which
    importing torch raises (and is recorded): the verbs' parsers must not try, `extract`'s must (its options come
    from the encoder registry), and no 5-10 s torch import is paid to show it."""
    code = ("import sys\n"
            "class NoTorch:\n"
            "    tried = []\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            NoTorch.tried.append(name)\n"
            "            raise ImportError('torch import blocked by the test: ' + name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from zoomfeat.cli import build_parser\n"
            "for verb in ('', 'tile', 'mil', 'probe', 'view', 'train'):\n"
            "    help = build_parser(verb).format_help()\n"
            "    assert 'extract' in help and 'probe' in help, help\n"
            "assert not NoTorch.tried and 'torch' not in sys.modules, NoTorch.tried[:3]\n"
            "try:\n"
            "    build_parser('extract').parse_args(['extract', 'x.svs', '--encoder', 'tiny-vit'])\n"
            "except ImportError:\n"
            "    pass\n"
            "assert NoTorch.tried, 'extract built its parser without the encoder registry (torch)'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
