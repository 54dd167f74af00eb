"""Real-vs-generated statistics: the Fréchet distance matches its closed form, colour stats match numpy."""

import numpy as np
import pytest

from zoomfeat.generate.realism import channel_stats, frechet_distance


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + np.array([1.0, 0.0, -1.0])
    # N(0, I) vs N(mu, 4I): |mu|^2 + tr(I + 4I - 2*2I) = 2 + 3 = 5
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_channel_stats():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[..., 0] = 10
    img[1, ..., 2] = 200
    st = channel_stats(img)
    assert st["mean"] == [10.0, 0.0, 100.0] and st["std"] == [0.0, 0.0, 100.0]
