"""Cox partial likelihood with tied times (Breslow or Efron), exact and independent of the input order.

``cox_loss(risk, time, event, ties)`` = −log partial likelihood / number of events. Samples are grouped by
distinct time; for a time t with event set D (d events) and risk set R = {i : tᵢ ≥ t}:

* Breslow: Σ_{i∈D} rᵢ − d · log Σ_{j∈R} e^{rⱼ}
* Efron:   Σ_{i∈D} rᵢ − Σ_{l=0}^{d−1} log(Σ_{j∈R} e^{rⱼ} − (l/d) Σ_{j∈D} e^{rⱼ})

Everything is computed per time group (risk-set sums over whole groups, the Efron index l by rank inside a
group, whose sum does not depend on which event gets which l), so permuting the inputs, tied pairs
included, cannot change the value. Log-space sums keep it finite for any risk scale. Computed in float64.
Own implementation: torchsurv is not a dependency, and this one is a few vectorised lines.
"""

from __future__ import annotations

import torch

TIES = ("breslow", "efron")


def _group_logsumexp(r: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """log Σ exp(r) per group index (−inf for groups without members)."""
    m = torch.full((n_groups,), -torch.inf, dtype=r.dtype, device=r.device)
    m = m.scatter_reduce(0, group, r.detach(), reduce="amax")
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros(n_groups, dtype=r.dtype, device=r.device).scatter_add(0, group, torch.exp(r - shift[group]))
    return torch.log(s) + shift


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, ties: str = "breslow") -> torch.Tensor:
    """Negative Cox log partial likelihood divided by the number of events (0, with a gradient, if none).

    ``risk`` (n,) log hazard ratios (higher = earlier event), ``time`` (n,), ``event`` (n,) 1 = event,
    0 = censored; ``ties`` 'breslow' (lifelines/statsmodels "breslow") or 'efron' (lifelines' CoxPHFitter).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    r = risk.reshape(-1).to(torch.float64)
    t = time.reshape(-1).to(device=r.device, dtype=torch.float64)
    e = event.reshape(-1).to(device=r.device, dtype=torch.float64)
    if not (len(r) == len(t) == len(e)):
        raise ValueError(f"risk, time and event need one value per sample: {len(r)}, {len(t)}, {len(e)}")
    n_events = e.sum()
    if n_events < 1:
        return risk.sum() * 0.0
    uniq, group = torch.unique(t, sorted=True, return_inverse=True)  # group 0 = earliest time
    g = len(uniq)
    # log of the risk-set sum of each time group: groups at or after it, i.e. a reversed cumulative logsumexp
    log_group = _group_logsumexp(r, group, g)
    log_risk_set = torch.logcumsumexp(log_group.flip(0), 0).flip(0)
    d = torch.zeros(g, dtype=r.dtype, device=r.device).scatter_add(0, group, e)
    ev = e > 0
    if ties == "breslow":
        log_denominator = (d * log_risk_set).sum()
    else:
        log_tied = _group_logsumexp(r[ev], group[ev], g)  # log Σ_{D} e^r per group (−inf without events)
        # l = 0..d−1 for the events of each group: rank among that group's events (any order gives the same sum)
        gi = group[ev]
        order = torch.argsort(gi, stable=True)
        first = torch.searchsorted(gi[order], gi[order], right=False)
        rank = torch.empty_like(gi)
        rank[order] = torch.arange(len(gi), device=gi.device) - first
        frac = rank.to(r.dtype) / d[gi]
        ratio = torch.exp(log_tied[gi] - log_risk_set[gi]).clamp(max=1.0)  # Σ_D / Σ_R ≤ 1
        log_denominator = (log_risk_set[gi] + torch.log1p(-frac * ratio)).sum()
    loglik = (r * e).sum() - log_denominator
    return (-loglik / n_events).to(risk.dtype)
