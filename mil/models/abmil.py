"""Gated attention MIL (Ilse et al. 2018) with CLAM's layer sizes, mask-aware for padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mil.models.registry import register_head


def instance_mlp(in_dim: int, embed_dim: int, n_layers: int = 1, dropout: float = 0.25) -> nn.Sequential:
    """The per-instance projection before pooling: ``n_layers`` × (Linear → ReLU → Dropout), CLAM's ``fc``."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(max(1, int(n_layers))):
        layers += [nn.Linear(d, embed_dim), nn.ReLU(), nn.Dropout(dropout)]
        d = embed_dim
    return nn.Sequential(*layers)


def default_width(in_dim: int) -> int:
    """ABMIL's default instance width: CLAM's 512 for wide features, never wider than the features themselves (floor
    64): 1024-d UNI → 512 (CLAM), 48-d tiny-vit → 64. A 512-wide projection of 48-d features lost to a linear probe
    on the demo's cohorts (issue 23.4; docs/mil.md "Heads that learn on small cohorts")."""
    return min(512, max(64, int(in_dim)))


class GatedAttention(nn.Module):
    """a_k = softmax_k( wᵀ(tanh(V h_k) ⊙ sigm(U h_k)) ) over the valid instances of each bag (CLAM ``Attn_Net_Gated``)."""

    def __init__(self, dim: int, attn_dim: int = 256, dropout: float = 0.25, gated: bool = True):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B,N,C], mask [B,N] (True = real instance) → (pooled [B,C], softmax weights [B,N], raw scores [B,N])."""
        a = self.a(h)
        if self.b is not None:
            a = a * self.b(h)
        raw = self.w(a).squeeze(-1)  # [B,N]
        if mask is not None:
            raw = raw.masked_fill(~mask, torch.finfo(raw.dtype).min)
        weights = torch.softmax(raw, dim=1)
        if mask is not None:
            weights = weights * mask  # exact zeros on padding, even for an all-padding row
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)
        return pooled, weights, raw


@dataclass
class ABMILOptions:
    """Options of the ``abmil`` head (``hparams`` keys)."""

    embed_dim: int | None = None  # None: follows in_dim (default_width)
    attn_dim: int | None = None  # None: embed_dim // 2
    dropout: float = 0.25
    n_fc: int = 1
    gated: bool = True


@register_head("abmil", options=ABMILOptions)
class ABMIL(nn.Module):
    """Gated ABMIL: instance MLP (fc :func:`default_width` — 512 for ≥ 512-d features —, dropout 0.25) → gated
    attention (half that width) → weighted mean → Linear.

    This is CLAM-SB with ``--no_inst_cluster``, the usual "ABMIL" baseline. ``forward`` returns a dict with
    ``logits`` [B, n_out], ``attention`` [B, N] (softmax weights, 0 on padding), ``scores`` [B, N] (raw
    pre-softmax attention, what heatmaps rank) and ``embedding`` [B, C].
    """

    def __init__(
        self,
        in_dim: int,
        n_out: int,
        embed_dim: int | None = None,
        attn_dim: int | None = None,
        dropout: float = 0.25,
        n_fc: int = 1,
        gated: bool = True,
    ):
        super().__init__()
        embed_dim = int(embed_dim or default_width(in_dim))
        attn_dim = int(attn_dim or embed_dim // 2)
        self.sizes = {"embed_dim": embed_dim, "attn_dim": attn_dim}  # resolved: saved with a model (mil train)
        self.fc = instance_mlp(in_dim, embed_dim, n_fc, dropout)
        self.attention = GatedAttention(embed_dim, attn_dim, dropout, gated)
        self.classifier = nn.Linear(embed_dim, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(0)
        h = self.fc(x)
        pooled, weights, raw = self.attention(h, mask)
        return {"logits": self.classifier(pooled), "attention": weights, "scores": raw, "embedding": pooled}
