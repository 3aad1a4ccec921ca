"""Contingency table, CSI and SEDI by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precip_cvae import metrics as m


def test_contingency_csi_sedi_by_hand():
    pred = np.array([[3.0, 0.0], [2.0, 5.0]])
    obs = np.array([[3.0, 3.0], [0.0, 0.0]])
    table = m.contingency(pred, obs, 2.0, None)
    assert table == {"hits": 1, "misses": 1, "false_alarms": 2, "correct_negatives": 0}
    assert m.csi(table) == pytest.approx(1 / 4)
    assert math.isnan(m.sedi(table))  # F = 2/2 = 1
    table = {"hits": 20, "misses": 10, "false_alarms": 30, "correct_negatives": 940}
    assert m.csi(table) == pytest.approx(20 / 60)
    # H = 2/3, F = 3/97: ln F = -3.476099, ln H = -0.405465, ln(1-F) = -0.031416, ln(1-H) = -1.098612
    # SEDI = (-3.476099 + 0.405465 + 0.031416 - 1.098612) / (-3.476099 - 0.405465 - 0.031416 - 1.098612)
    assert m.sedi(table) == pytest.approx(-4.137831 / -5.011593, abs=1e-6)
    assert math.isnan(m.sedi({**table, "misses": 0}))  # H = 1
    assert math.isnan(m.sedi({**table, "false_alarms": 0}))  # F = 0
