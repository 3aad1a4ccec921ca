"""Fractions skill score by hand."""

from __future__ import annotations

import numpy as np
import pytest

from precip_cvae import metrics as m
from tests.cases import rainy


def test_fss_limits_and_hand_examples():
    rng = np.random.default_rng(31)
    field = rainy(rng, (20, 20))
    assert m.fss(field, field, 2.0, 5) == pytest.approx(1.0)
    a = np.zeros((6, 6))
    b = np.zeros((6, 6))
    a[0, 0] = b[5, 5] = 10.0
    assert m.fss(a, b, 1.0, 1) == pytest.approx(0.0)
    # window 1: events pred {(0,0)}, obs {(0,0), (0,1)}: sum (d^2) = 1, reference (1+1) + (0+1) = 3
    pred = np.array([[5.0, 0.0], [0.0, 0.0]])
    obs = np.array([[5.0, 5.0], [0.0, 0.0]])
    assert m.fss(pred, obs, 1.0, 1) == pytest.approx(2 / 3)
    # the pixel (0,1) masked out: the fields agree on the rest
    assert m.fss(pred, obs, 1.0, 1, mask=np.array([[True, False], [True, True]])) == pytest.approx(1.0)
    # probability 0.5 where obs has its event: (0.5 - 1)^2 = 0.25 over 0.25 + 1
    prob = np.array([[0.5, 0.0], [0.0, 0.0]])
    assert m.fss(prob, np.array([[5.0, 0.0], [0.0, 0.0]]), 1.0, 1, probabilistic=True) == pytest.approx(0.8)


def test_fss_window_3_by_hand():
    pred = np.zeros((3, 3))
    obs = np.zeros((3, 3))
    pred[1, 1] = obs[0, 0] = 1.0
    # 3 x 3 box, zero padding: pred fractions 1/9 everywhere; obs 1/9 on the 4 pixels around (0,0), 0 elsewhere
    # sum (d^2) = 5/81; reference 9/81 + 4/81
    assert m.fss(pred, obs, 0.5, 3) == pytest.approx(1 - 5 / 13)


def test_fss_over_several_fields():
    pred = np.zeros((2, 2, 2))
    obs = np.zeros((2, 2, 2))
    pred[0, 0, 0] = obs[0, 0, 0] = obs[0, 0, 1] = 1.0  # field 0: 2/3 (as above)
    pred[1, 1, 1] = obs[1, 0, 0] = 1.0  # field 1: disjoint, 0
    assert m.fss(pred, obs, 0.5, 1) == pytest.approx((2 / 3 + 0) / 2)
    assert m.fss(pred, obs, 0.5, 1, aggregate="sums") == pytest.approx(1 - (1 + 2) / (3 + 2))
