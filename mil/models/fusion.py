"""Multi-scale (20x + 5x) fusion heads.

Early fusion needs no model: ``zoomfeat.bags.read_bag(path, mag="20x+5x")`` concatenates each 20x instance
with its parent 5x feature through ``parent_index``; any head then runs on the wider rows. ``TwoBranchMIL``
is the late-fusion variant: it takes those same concatenated rows, splits them at ``split_dim`` and pools
each scale with its own gated-attention branch before one classifier on the joined embeddings. The 5x
branch sees a parent once per 20x child, so parents weigh by their tissue coverage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mil.models.abmil import GatedAttention, instance_mlp
from mil.models.registry import register_head


@dataclass
class TwoBranchOptions:
    """Options of the ``twobranch`` head (``hparams`` keys); ``split_dim`` None: the 20x | 5x halves of a
    ``20x+5x`` bag (:meth:`TwoBranchMIL.resolve_options`)."""

    split_dim: int | None = None
    embed_dim: int = 512
    attn_dim: int = 256
    dropout: float = 0.25
    n_fc: int = 1
    gated: bool = True


@register_head("twobranch", options=TwoBranchOptions)
class TwoBranchMIL(nn.Module):
    """Two gated-ABMIL branches (20x part, 5x part of each row) → concat → Linear."""

    @classmethod
    def resolve_options(cls, opts: TwoBranchOptions, in_dim: int, mag: str | None) -> TwoBranchOptions:
        """Without an explicit ``split_dim`` the head needs ``mag='20x+5x'`` and splits the bag width in half."""
        if opts.split_dim is not None:
            return opts
        if mag != "20x+5x":
            raise ValueError("model 'twobranch' needs mag '20x+5x' (or an explicit split_dim)")
        return dataclasses.replace(opts, split_dim=in_dim // 2)

    def __init__(
        self,
        in_dim: int,
        n_out: int,
        split_dim: int,
        embed_dim: int = 512,
        attn_dim: int = 256,
        dropout: float = 0.25,
        n_fc: int = 1,
        gated: bool = True,
    ):
        super().__init__()
        if not 0 < split_dim < in_dim:
            raise ValueError(f"TwoBranchMIL: split_dim must be inside (0, {in_dim}), got {split_dim}")
        self.split_dim = int(split_dim)
        self.fc20 = instance_mlp(split_dim, embed_dim, n_fc, dropout)
        self.fc5 = instance_mlp(in_dim - split_dim, embed_dim, n_fc, dropout)
        self.att20 = GatedAttention(embed_dim, attn_dim, dropout, gated)
        self.att5 = GatedAttention(embed_dim, attn_dim, dropout, gated)
        self.classifier = nn.Linear(2 * embed_dim, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(0)
        z20, a20, s20 = self.att20(self.fc20(x[..., : self.split_dim]), mask)
        z5, a5, s5 = self.att5(self.fc5(x[..., self.split_dim :]), mask)
        emb = torch.cat([z20, z5], dim=-1)
        return {
            "logits": self.classifier(emb),
            "attention": a20,
            "scores": s20,
            "attention_5x": a5,
            "embedding": emb,
        }
