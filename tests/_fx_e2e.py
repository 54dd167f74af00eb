"""Shared helpers of the end-to-end test files (issue 24: the default suite's fast twins).

``run_notebook_in_process``: a notebook's code cells executed in this process, in order, in one namespace, the way
a kernel runs them (a cell's last expression is shown through IPython's display formatter, ``display(...)`` calls
are recorded with the same formatter, matplotlib figures get IPython's PNG printer as under the inline backend) and
with the environment the Makefile's ``notebooks`` target sets. It returns the notebook with its outputs filled in,
so the real-kernel test's assertions run unchanged on it."""

from __future__ import annotations

import ast
import copy
import os
import warnings
from pathlib import Path

import pytest


def _formatter():
    from IPython.core.formatters import DisplayFormatter
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    fmt = DisplayFormatter()
    # what IPython's select_figure_formats registers for the inline backend (matplotlib_inline)
    fmt.formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png"))
    return fmt


def _output(fmt, obj, output_type: str, count: int | None = None):
    import nbformat

    data, metadata = fmt.format(obj)
    out = {"output_type": output_type, "data": data, "metadata": metadata}
    if output_type == "execute_result":
        out["execution_count"] = count
    return nbformat.from_dict(out)


def _run_cell(source: str, ns: dict, fmt, outputs: list, count: int, filename: str) -> None:
    """exec the cell; a final bare expression is evaluated and shown as the kernel's displayhook would."""
    tree = ast.parse(source, filename=filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), ns)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), filename, "eval"), ns)
        if value is not None and not source.rstrip().endswith(";"):
            outputs.append(_output(fmt, value, "execute_result", count))


def run_notebook_in_process(path: Path, work: Path, out: Path, monkeypatch: pytest.MonkeyPatch, root: Path,
                            shrink: dict[str, str] | None = None):
    """Execute ``path``'s code cells here with cwd ``work`` and ZOOMFEAT_NB_OUT ``out``; return the executed copy.

    ``shrink``: exact source snippets replaced in every code cell before it runs (smaller sizes: fewer epochs,
    folds, sampler steps); each must occur in the notebook, so an edited notebook fails here instead of silently
    running at full size or untested."""
    import IPython.core.display_functions as display_functions
    import IPython.display
    import nbformat

    nb = copy.deepcopy(nbformat.read(path, as_version=4))
    fmt = _formatter()
    current: list = []

    def display(*objs, **kw):
        for obj in objs:
            current.append(_output(fmt, obj, "display_data"))

    work.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(work)
    # the Makefile's `notebooks` target (ZOOMFEAT_NB_THREADS=1 WANDB_MODE=disabled) + the test kernel's variables
    for k, v in {"ZOOMFEAT_NB_THREADS": "1", "WANDB_MODE": "disabled", "ZOOMFEAT_ROOT": str(root),
                 "ZOOMFEAT_NB_OUT": str(out)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(display_functions, "display", display)
    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    shrink = shrink or {}
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    missing = [k for k in shrink if not any(k in c.source for c in code_cells)]
    assert not missing, f"{path.name}: snippets to shrink not found (notebook edited?): {missing}"
    count = 0
    with warnings.catch_warnings():  # the notebooks' own filterwarnings calls stay inside
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            count += 1
            current = cell.outputs = []
            source = cell.source
            for old, new in shrink.items():
                source = source.replace(old, new)
            _run_cell(source, ns, fmt, current, count, f"<{path.name} cell {count}>")
            cell.execution_count = count
    import matplotlib.pyplot as plt

    plt.close("all")
    return nb
