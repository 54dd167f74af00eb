"""Which slides this process owns: torchrun ranks, ``--shard K/N`` (SLURM array jobs, no rendezvous), or both.

Every split is the same round-robin over the sorted slide list (``slides[i::n]``), so ``--shard K/N`` takes exactly
the slides that rank K of an N-process torchrun would take. Combined (N array tasks, each a torchrun of W ranks),
process (K, r) is share ``K·W + r`` of ``N·W``: the shares still partition the cohort, and whichever process
finishes last merges the per-share summaries into one ``summary.csv``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (0-based K < N) → ``(K, N)``; None stays None. One-line error for anything else."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, (tuple, list)):
        k, n = (int(v) for v in spec)
    else:
        m = _SHARD.match(str(spec))
        if not m:
            raise ValueError(f"--shard must look like K/N (e.g. 0/8, K counted from 0), got {spec!r}")
        k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard K/N needs 0 <= K < N, got {k}/{n}")
    return k, n


@dataclass(frozen=True)
class Share:
    """This process's share: ``index`` of ``count`` round-robin shares of the slide list."""

    index: int = 0
    count: int = 1
    run_id: str = ""

    def take(self, items) -> list:
        return list(items)[self.index::self.count]

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def process_share(shard: str | tuple[int, int] | None = None, env: Mapping[str, str] | None = None) -> Share:
    """The share of this process from torchrun's ``RANK``/``WORLD_SIZE`` and an optional ``--shard K/N``.

    ``run_id`` ties the per-share summaries of one job together: torchrun's ``TORCHELASTIC_RUN_ID`` (same on
    every node of a multi-node job); with ``--shard``, ``ZOOMFEAT_RUN_ID`` or ``SLURM_ARRAY_JOB_ID`` (same for
    every task of an array) — never the per-launch torchrun id, which differs between array tasks.
    """
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    ks = parse_shard(shard)
    if ks is None:
        return Share(rank, world, env.get("TORCHELASTIC_RUN_ID") or env.get("ZOOMFEAT_RUN_ID") or "")
    k, n = ks
    return Share(k * world + rank, n * world, env.get("ZOOMFEAT_RUN_ID") or env.get("SLURM_ARRAY_JOB_ID") or "")


__all__ = ["parse_shard", "process_share", "Share"]
