"""The table of every registered encoder (``zoomfeat encoders``, ``docs/encoders.md``): name, width, input, scale,
default precision, whether it needs weights, licence / access and where the weights come from — read from each
registry entry's ``info`` (nothing is built, nothing is downloaded: the sources are pointers only)."""

from __future__ import annotations

import csv
import io

from zoomfeat.encoders.registry import encoder_entries

COLUMNS = ("name", "dim", "input", "scale", "precision", "needs weights", "license / access", "weights from")
FORMATS = ("md", "csv", "table")


def encoder_rows(builtin_only: bool = False) -> list[dict[str, str]]:
    """One row per registered encoder, in registration order (aliases name their target); ``builtin_only``: only
    zoomfeat's own (not plugins or encoders registered by user code)."""
    rows = []
    for name, entry in encoder_entries().items():
        if builtin_only and not getattr(entry.build, "__module__", "").startswith("zoomfeat."):
            continue
        info = entry.info
        alias = f" (alias of {info['alias_of']})" if info.get("alias_of") else ""
        rows.append({"name": name + alias, "dim": str(info.get("dim", "-")), "input": str(info.get("input", "-")),
                     "scale": str(info.get("scale", "-")), "precision": str(info.get("precision", "-")),
                     "needs weights": "yes" if entry.needs_weights else "no",
                     "license / access": str(info.get("license", "-")),
                     "weights from": str(info.get("source", "-"))})
    return rows


def format_rows(rows: list[dict[str, str]], fmt: str = "table") -> str:
    """``md`` (a Markdown table), ``csv`` or ``table`` (aligned plain text)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


__all__ = ["COLUMNS", "FORMATS", "encoder_rows", "format_rows"]
