"""TransMIL (Shao et al. 2021) following the official forward, with a documented mask-aware variant.

Official forward (szc19990412/TransMIL ``models/TransMIL.py``): fc 1024→512 + ReLU; pad the N instances to
⌈√N⌉² by appending copies of the first tokens; prepend a learned class token; TransLayer (x + Nyström(LN(x)),
no feed-forward); PPEG (x + DWConv7 + DWConv5 + DWConv3 on the square grid); TransLayer; LayerNorm; class
token → Linear. The Nyström attention is lucidrains' ``nystrom-attention`` package, as in the original.

``mask_aware=False`` (default, official): padded batches are handled by filling each bag's tail (batch and
square padding) with copies of its own first tokens, so a batch of one is exactly the official model.
``mask_aware=True``: padding tokens are zeros and are masked out of every Nyström attention (including
the landmark means, which the official model pollutes with the package's front zero-padding) and re-zeroed
after PPEG, so padding values cannot change the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nystrom_attention import NystromAttention
from torch import nn

from mil.models.registry import register_head


class TransLayer(nn.Module):
    """x + NystromAttention(LayerNorm(x)); the official layer has no feed-forward sublayer."""

    def __init__(self, dim: int, heads: int, dim_head: int, num_landmarks: int, pinv_iterations: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(
            dim=dim,
            dim_head=dim_head,
            heads=heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=True,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cls_attention: bool = False):
        if not cls_attention:
            return x + self.attn(self.norm(x), mask=mask), None
        out, (a1, a2_inv, a3) = self.attn(self.norm(x), mask=mask, return_attn_matrices=True)
        # The package front-pads the sequence to a multiple of the landmark count: the class token is row `pad`.
        n, m = x.shape[1], self.attn.num_landmarks
        pad = (m - n % m) % m
        row = (a1[:, :, pad : pad + 1, :] @ a2_inv) @ a3  # [B, heads, 1, pad + n]: linear in n, never n×n
        return x + out, row[:, :, 0, pad + 1 :].mean(dim=1)  # [B, n-1] over the instance tokens


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions on the ⌈√N⌉² token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = x.shape
        cls_token, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(b, c, side, side)
        grid = self.proj(grid) + grid + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


@dataclass
class TransMILOptions:
    """Options of the ``transmil`` head (``hparams`` keys)."""

    embed_dim: int = 512
    heads: int = 8
    dim_head: int | None = None
    num_landmarks: int | None = None
    pinv_iterations: int = 6
    dropout: float = 0.1
    mask_aware: bool = False


@register_head("transmil", options=TransMILOptions)
class TransMIL(nn.Module):
    """TransMIL; ``forward(x [B,N,D], mask [B,N] | None)`` → dict(logits, attention [B,N], embedding).

    ``attention`` is the class token's row of the second layer's Nyström attention (averaged over heads)
    restricted to the real instances; the square-padding copies of an instance add to that instance.
    """

    def __init__(
        self,
        in_dim: int,
        n_out: int,
        embed_dim: int = 512,
        heads: int = 8,
        dim_head: int | None = None,
        num_landmarks: int | None = None,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
        mask_aware: bool = False,
    ):
        super().__init__()
        dim_head = dim_head or embed_dim // heads
        num_landmarks = num_landmarks or embed_dim // 2
        self.mask_aware = bool(mask_aware)
        self.fc = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.layer1 = TransLayer(embed_dim, heads, dim_head, num_landmarks, pinv_iterations, dropout)
        self.pos_layer = PPEG(embed_dim)
        self.layer2 = TransLayer(embed_dim, heads, dim_head, num_landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, n_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = True):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        b, n, _ = x.shape
        h = self.fc(x)
        side = max(1, math.ceil(math.sqrt(n)))
        total = side * side
        lengths = mask.sum(1) if mask is not None else torch.full((b,), n, device=x.device, dtype=torch.long)
        if (lengths < 1).any():
            raise ValueError("TransMIL: every bag needs at least one instance")
        pos = torch.arange(total, device=x.device).unsqueeze(0).expand(b, -1)
        valid = pos < lengths.unsqueeze(1)  # [B, total]
        if self.mask_aware:
            src = torch.where(valid, pos, torch.zeros_like(pos))
            h = torch.gather(h, 1, src.unsqueeze(-1).expand(-1, -1, h.shape[-1])) * valid.unsqueeze(-1)
            seq_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), valid], dim=1)
        else:
            # Official square padding: the tail repeats the bag's first tokens (per bag for padded batches).
            src = torch.where(valid, pos, (pos - lengths.unsqueeze(1)) % lengths.unsqueeze(1))
            h = torch.gather(h, 1, src.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            seq_mask = None
        h = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h], dim=1)
        h, _ = self.layer1(h, seq_mask)
        h = self.pos_layer(h, side)
        if seq_mask is not None:
            h = h * seq_mask.unsqueeze(-1)
        h, row = self.layer2(h, seq_mask, cls_attention=return_attention)
        emb = self.norm(h)[:, 0]
        out = {"logits": self.classifier(emb), "embedding": emb}
        if row is not None:
            # Fold the square-padding copies back onto the instance they copy, then drop batch padding.
            att = torch.zeros(b, n, dtype=row.dtype, device=row.device)
            keep = valid if self.mask_aware else torch.ones_like(valid)
            att.scatter_add_(1, src.clamp(max=n - 1), row * keep)
            if mask is not None:
                att = att * mask
            out["attention"] = att
        return out
