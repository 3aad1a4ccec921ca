"""Categorical scores of exceeding a threshold: the 2 x 2 contingency table, CSI and SEDI."""

from __future__ import annotations

import math
from typing import Any

from numpy.typing import ArrayLike

from precip_cvae.metrics._core import (
    _CELLS,
    Accumulator,
    DeviceFields,
    Fields,
    _div,
    _table,
    _table_device,
    ensemble_score,
    run_once,
)


class Categorical(Accumulator):
    """Contingency tables of ``value >= t`` (every member against the observation) for each ``label: t`` of
    ``thresholds`` (mm/day): ``CSI_<label>`` and ``SEDI_<label>``; the tables are in :attr:`tables`."""

    def __init__(self, thresholds: dict[str, float]):
        self.thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.tables = {key: dict.fromkeys(_CELLS, 0) for key in self.thresholds}

    def settings(self) -> tuple:
        return tuple(self.thresholds.items())

    def accum(self, f: Fields) -> None:
        self._count(f, _table)

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        self._count(f, _table_device)

    def _count(self, f: Fields | DeviceFields, table) -> None:
        if not f.n:
            return
        for key, t in self.thresholds.items():
            for cell, count in table(f.x >= t, (f.y >= t)[None]).items():
                self.tables[key][cell] += count

    def _merge(self, other: Categorical) -> None:  # type: ignore[override]
        for key, table in other.tables.items():
            for cell, count in table.items():
                self.tables[key][cell] += count

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, table in self.tables.items():
            out[f"CSI_{key}"] = csi(table)
            out[f"SEDI_{key}"] = sedi(table)
        return out


def contingency(pred: ArrayLike, obs: ArrayLike, threshold: float, mask: ArrayLike | None = None) -> dict[str, int]:
    """2 x 2 contingency table of the event ``value >= threshold`` over valid pixels (of all fields):
    :class:`Categorical` run once.

    Parameters
    ----------
    pred, obs : (..., H, W) mm/day
    threshold : float, mm/day
    mask : (H, W) bool or None

    Returns
    -------
    dict of int counts: ``hits``, ``misses``, ``false_alarms``, ``correct_negatives``
    """
    scores = Categorical({"t": threshold})
    run_once(scores, Fields.single(pred, obs, mask))
    return scores.tables["t"]


def csi(table: dict[str, float]) -> float:
    """Critical Success Index ``hits / (hits + misses + false_alarms)`` (NaN with neither events nor forecasts).

    Parameters
    ----------
    table : dict from :func:`contingency`

    Returns
    -------
    float in [0, 1]
    """
    return _div(table["hits"], table["hits"] + table["misses"] + table["false_alarms"])


def sedi(table: dict[str, float]) -> float:
    """Symmetric Extremal Dependence Index (Ferro & Stephenson 2011), for rare events.

    ``SEDI = [ln F - ln H - ln(1-F) + ln(1-H)] / [ln F + ln H + ln(1-F) + ln(1-H)]`` with hit rate
    ``H = hits / (hits + misses)`` and false-alarm rate ``F = false_alarms / (false_alarms + correct_negatives)``.
    1 is perfect, 0 no skill. Undefined (NaN) when H or F is 0 or 1 (a logarithm of 0), or has no denominator;
    no ad-hoc clipping is applied.

    Parameters
    ----------
    table : dict from :func:`contingency`

    Returns
    -------
    float in [-1, 1] or NaN
    """
    H = _div(table["hits"], table["hits"] + table["misses"])
    F = _div(table["false_alarms"], table["false_alarms"] + table["correct_negatives"])
    if not (0.0 < H < 1.0 and 0.0 < F < 1.0):
        return math.nan
    lf, lh, l1f, l1h = math.log(F), math.log(H), math.log1p(-F), math.log1p(-H)
    return (lf - lh - l1f + l1h) / (lf + lh + l1f + l1h)


ensemble_score("categorical", lambda s: Categorical(s.thresholds))
