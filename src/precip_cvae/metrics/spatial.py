"""Spatial verification: the Fractions Skill Score of exceeding a threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import uniform_filter

from precip_cvae.metrics._core import (
    DeviceFields,
    Fields,
    Sums,
    _check_same,
    _div,
    _f64,
    _mean,
    _valid,
    ensemble_score,
)


def _fractions(binary: np.ndarray, window: int) -> np.ndarray:
    # Only the two spatial axes are smoothed; zero padding: outside the grid there are no events.
    size = (1,) * (binary.ndim - 2) + (window, window)
    return uniform_filter(binary, size=size, mode="constant", cval=0.0)


def _fss_terms(pf: np.ndarray, po: np.ndarray, valid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-field FSS numerator sum((Ff - Fo)^2) and reference sum(Ff^2 + Fo^2) over valid pixels."""
    ff, fo = _fractions(pf, window), _fractions(po, window)
    num = np.where(valid, (ff - fo) ** 2, 0.0).sum(axis=(-2, -1))
    den = np.where(valid, ff**2 + fo**2, 0.0).sum(axis=(-2, -1))
    return num, den


class FSS(Sums):
    """Fractions Skill Score of the ensemble's exceedance probability against the observed exceedance, from the sums
    over all fields (Roberts & Lean 2008): ``FSS_<label>_w<window>`` for each ``label: t`` of ``thresholds`` (mm/day)
    and each odd box side ``window`` (pixels)."""

    def __init__(self, thresholds: dict[str, float], windows: Sequence[int] = (1, 5, 11)):
        super().__init__()
        self.thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.windows = tuple(int(w) for w in windows)

    def settings(self) -> tuple:
        return (tuple(self.thresholds.items()), self.windows)

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        for key, t in self.thresholds.items():
            prob = np.where(f.v, (f.ens >= t).mean(axis=f.ax), 0.0)
            event = np.where(f.v, f.obs >= t, 0.0)
            for w in self.windows:
                num, den = _fss_terms(prob, event, f.v, w)
                self.add(f"num_{key}_{w}", np.sum(num))
                self.add(f"den_{key}_{w}", np.sum(den))

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are (box means by average pooling with zero
        padding, as ``uniform_filter``'s constant mode)."""
        import torch
        import torch.nn.functional as F

        if not f.n:
            return
        for key, t in self.thresholds.items():
            prob = torch.where(f.v, (f.ens >= t).to(f.ens.dtype).mean(dim=1), 0.0)
            event = torch.where(f.v, (f.obs >= t).to(f.obs.dtype), 0.0)
            for w in self.windows:
                if w % 2 == 0:
                    raise ValueError(f"FSS on a device needs odd windows, got {w}")
                ff, fo = (F.avg_pool2d(a[:, None], w, stride=1, padding=w // 2, count_include_pad=True)[:, 0]
                          for a in (prob, event))  # fmt: skip
                self.add(f"num_{key}_{w}", torch.where(f.v, (ff - fo) ** 2, 0.0).sum())
                self.add(f"den_{key}_{w}", torch.where(f.v, ff**2 + fo**2, 0.0).sum())

    def compute(self) -> dict[str, Any]:
        return {
            f"FSS_{key}_w{w}": 1.0 - _div(self.get(f"num_{key}_{w}"), self.get(f"den_{key}_{w}"))
            for key in self.thresholds
            for w in self.windows
        }


def fss(
    pred: ArrayLike,
    obs: ArrayLike,
    threshold: float,
    window: int,
    mask: ArrayLike | None = None,
    probabilistic: bool = False,
    aggregate: Literal["mean", "sums"] = "mean",
) -> float:
    """Fractions Skill Score (Roberts & Lean 2008) of exceeding ``threshold``.

    Both fields become binary exceedance fields (``value >= threshold``; with ``probabilistic=True`` ``pred`` is
    already a probability field in [0, 1], e.g. the fraction of members exceeding, and is used as is). Fractions are
    box means over ``window`` x ``window`` pixels (``scipy.ndimage.uniform_filter``, zero padding); invalid pixels
    count as 0 in both fields and are left out of the sums. ``FSS = 1 - sum (Ff - Fo)^2 / sum (Ff^2 + Fo^2)``.

    Parameters
    ----------
    pred : (..., H, W) mm/day, or probability in [0, 1] if ``probabilistic``
    obs : (..., H, W) mm/day
    threshold : float, mm/day
    window : int, odd box side in pixels (1 = pixel by pixel)
    mask : (H, W) bool or None
    probabilistic : bool
    aggregate : "mean" or "sums"
        With leading axes: the mean of the per-field scores (fields without any event are skipped), or one score
        from the sums over all fields (as in Roberts & Lean, and :class:`EnsembleScores`).

    Returns
    -------
    float in [0, 1] (NaN when no field has an event in either)
    """
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    if obs.ndim < 2:
        raise ValueError("fss needs fields with two spatial axes")
    v = _valid(obs, mask, pred)
    pf = np.where(v, pred if probabilistic else (pred >= threshold), 0.0)
    po = np.where(v, obs >= threshold, 0.0)
    num, den = _fss_terms(pf, po, v, window)
    if aggregate == "sums":
        return 1.0 - _div(num.sum(), den.sum())
    if aggregate != "mean":
        raise ValueError(f"aggregate must be 'mean' or 'sums', got {aggregate!r}")
    num, den = np.atleast_1d(num), np.atleast_1d(den)
    keep = den > 0
    return _mean(1.0 - num[keep] / den[keep])


ensemble_score("fss", lambda s: FSS(s.thresholds, s.fss_windows))
