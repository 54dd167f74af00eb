"""mil.cox_loss: exact Breslow / Efron partial likelihood, independent of input order, equal to brute force and
to lifelines (Efron) / statsmodels (Breslow) Cox fits on GBSG2 with a linear head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mil
from mil.survival import cox_loss


def brute_force(r, t, e, ties):
    """Textbook sum over distinct event times, in plain Python."""
    r, t, e = map(lambda a: np.asarray(a, dtype=float), (r, t, e))
    ll = 0.0
    for tj in sorted(set(t[e > 0])):
        dj = [i for i in range(len(t)) if t[i] == tj and e[i] > 0]
        risk = sum(math.exp(r[i]) for i in range(len(t)) if t[i] >= tj)
        tied = sum(math.exp(r[i]) for i in dj)
        ll += sum(r[i] for i in dj)
        for l in range(len(dj)):
            ll -= math.log(risk - (l / len(dj) * tied if ties == "efron" else 0.0))
    return -ll / e.sum()


def test_issue_example_is_order_independent():
    r = torch.tensor([0.3, -0.5, 1.2, 0.1])
    t = torch.tensor([5.0, 5.0, 3.0, 7.0])
    e = torch.tensor([1.0, 1.0, 1.0, 0.0])
    for p in ([0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]):
        assert cox_loss(r[p], t[p], e[p]).item() == pytest.approx(1.0304, abs=1e-4)  # the issue's Breslow value
        assert cox_loss(r[p], t[p], e[p], "efron").item() == pytest.approx(brute_force(r, t, e, "efron"), 1e-6)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_matches_brute_force_and_permutation_invariant_with_heavy_ties(ties):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 40))
        t = rng.integers(0, 6, n).astype(float)  # few distinct times: many ties, tied censored samples too
        e = (rng.random(n) < 0.7).astype(float)
        e[0] = 1.0
        r = rng.normal(0, 2, n)
        ref = brute_force(r, t, e, ties)
        val = cox_loss(torch.tensor(r), torch.tensor(t), torch.tensor(e), ties).item()
        assert val == pytest.approx(ref, rel=1e-9, abs=1e-12), trial
        for _ in range(3):
            p = rng.permutation(n)
            assert cox_loss(torch.tensor(r[p]), torch.tensor(t[p]), torch.tensor(e[p]), ties).item() == \
                pytest.approx(val, rel=1e-12, abs=1e-12)


def test_large_risks_stay_finite_and_no_events_gives_zero():
    r = torch.tensor([800.0, -900.0, 5.0, 790.0], requires_grad=True)
    t = torch.tensor([1.0, 1.0, 2.0, 1.0])
    e = torch.tensor([1.0, 1.0, 0.0, 1.0])
    for ties in ("breslow", "efron"):
        loss = cox_loss(r, t, e, ties)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(r.grad).all()
        r.grad = None
    zero = cox_loss(r, t, torch.zeros(4))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="ties"):
        cox_loss(r, t, e, "exact")


def _gbsg2():
    from lifelines.datasets import load_gbsg2

    df = load_gbsg2()
    cols = ["age", "tsize", "pnodes", "progrec", "estrec"]
    x = df[cols].to_numpy(float)
    x = (x - x.mean(0)) / x.std(0)
    x[:, 2:] = np.clip(x[:, 2:], -3, 3)  # tame the long tails so both fits are well conditioned
    time = np.ceil(df["time"].to_numpy(float) / 90.0)  # quarters: many tied event times
    return x, time, df["cens"].to_numpy(float), cols


def _fit_linear_head(x, time, event, ties):
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 1, bias=False).double()
    torch.nn.init.zeros_(head.weight)
    xt, tt, et = map(torch.as_tensor, (x, time, event))
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = mil.cox_loss(head(xt).view(-1), tt, et, ties=ties)
        loss.backward()
        return loss

    opt.step(closure)
    return head.weight.detach().numpy().ravel()


def test_linear_head_matches_lifelines_efron_and_statsmodels_breslow():
    import pandas as pd
    from lifelines import CoxPHFitter
    from statsmodels.duration.hazard_regression import PHReg

    x, time, event, cols = _gbsg2()
    assert len(np.unique(time[event > 0])) < 0.2 * event.sum()  # the data really has heavy ties
    df = pd.DataFrame(x, columns=cols).assign(time=time, event=event)
    ref_efron = CoxPHFitter().fit(df, "time", "event").params_[cols].to_numpy()
    ref_breslow = PHReg(time, x, status=event, ties="breslow").fit().params
    ours_efron = _fit_linear_head(x, time, event, "efron")
    ours_breslow = _fit_linear_head(x, time, event, "breslow")
    np.testing.assert_allclose(ours_efron, ref_efron, atol=1e-4)
    np.testing.assert_allclose(ours_breslow, ref_breslow, atol=1e-4)
    assert np.abs(ours_efron - ours_breslow).max() > 1e-3  # the tie methods really differ on this data
