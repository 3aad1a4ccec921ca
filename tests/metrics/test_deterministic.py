"""Deterministic scores by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precip_cvae import metrics as m


def test_deterministic_scores_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    obs = np.array([[0.0, 2.0], [5.0, np.nan]])  # the NaN pixel never counts
    mask = np.ones((2, 2), bool)
    # errors on the valid pixels: +1, 0, -2
    assert m.mae(pred, obs, mask) == pytest.approx(1.0)
    assert m.rmse(pred, obs, mask) == pytest.approx(math.sqrt(5 / 3))
    assert m.mae_tail(pred, obs, mask, 2.0) == pytest.approx(1.0)  # obs >= 2: errors 0 and 2
    assert m.mass_bias(pred, obs, mask) == pytest.approx(2.0 - 7 / 3)  # means (1+2+3)/3 and (0+2+5)/3
    mask[0, 0] = False
    assert m.mae(pred, obs, mask) == pytest.approx(1.0)  # errors 0, 2
    assert m.mass_bias(pred, obs, mask) == pytest.approx(2.5 - 3.5)
    assert math.isnan(m.mae_tail(pred, obs, mask, 100.0))


def test_mass_bias_is_a_mean_over_fields():
    obs = np.zeros((2, 1, 2))
    pred = np.array([[[1.0, 3.0]], [[0.0, 0.0]]])
    mask = np.array([[True, False]])
    # field 1: 1 - 0 on the one valid pixel; field 2: 0
    assert m.mass_bias(pred, obs, mask) == pytest.approx(0.5)
