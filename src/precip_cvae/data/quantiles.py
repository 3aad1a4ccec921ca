"""Exact percentiles of more values than fit in memory, in two passes over the data."""

from __future__ import annotations

import numpy as np


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's own formula for method="linear", so results agree to the last bit or so.
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


class StreamingPercentiles:
    """Percentiles of a stream of non-negative values, equal to ``np.percentile(all_values, p)``.

    Pass 1 (:meth:`count`) builds a histogram with log-spaced bins (exact zeros in a bin of their own, so
    do values below ``lower``);
    :meth:`plan` finds the bins that hold the order statistics needed; pass 2 (:meth:`collect`)
    keeps only the values in those bins, so memory stays small whatever the stream's length.

    Parameters
    ----------
    percentiles : values in [0, 100]
    bin_width : bin width in natural-log units (5e-4 is a 0.05 % relative width)
    lower, upper : range of the log-spaced bins; values outside share one bin at each end
    """

    def __init__(self, percentiles: list[float], bin_width: float = 5e-4, lower: float = 1e-12, upper: float = 1e5):
        self.percentiles = [float(p) for p in percentiles]
        self.bin_width = bin_width
        self.log_lower = float(np.log(lower))
        # [zeros, below lower, log-spaced bins..., overflow]
        self.n_bins = int(np.ceil((np.log(upper) - self.log_lower) / bin_width)) + 3
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self._needed: dict[int, list[int]] | None = None
        self._kept: dict[int, list[np.ndarray]] = {}

    def _bins(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            scaled = (np.log(values) - self.log_lower) / self.bin_width
        index = np.clip(np.floor(scaled), -1, self.n_bins - 3).astype(np.int64) + 2
        index[values <= 0] = 0
        return index

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def count(self, values: np.ndarray) -> None:
        """Pass 1: add finite, non-negative values (any shape)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        self.counts += np.bincount(self._bins(values), minlength=self.n_bins)

    def plan(self) -> None:
        """Between the passes: find which bins hold the ranks the percentiles need."""
        if self.n == 0:
            raise ValueError("no values were counted")
        cumulative = np.cumsum(self.counts)
        self._needed = {}
        for p in self.percentiles:
            position = (p / 100.0) * (self.n - 1)
            for rank in {int(np.floor(position)), int(np.ceil(position))}:
                b = int(np.searchsorted(cumulative, rank, side="right"))
                self._needed.setdefault(b, []).append(rank)
        self._kept = {b: [] for b in self._needed if b != 0}

    def collect(self, values: np.ndarray) -> None:
        """Pass 2: the same values in the same order as pass 1 (any chunking)."""
        if not self._kept:
            return
        values = np.asarray(values, dtype=np.float64).ravel()
        bins = self._bins(values)
        for b, store in self._kept.items():
            hit = bins == b
            if hit.any():
                store.append(values[hit])

    def result(self) -> dict[float, float]:
        """Percentile → value, after both passes."""
        if self._needed is None:
            raise ValueError("call plan() and collect() first")
        cumulative = np.cumsum(self.counts)
        order: dict[int, float] = {}
        for b in self._needed:
            before = int(cumulative[b - 1]) if b > 0 else 0
            sorted_bin = np.zeros(0) if b == 0 else np.sort(np.concatenate(self._kept[b] or [np.zeros(0)]))
            for rank in self._needed[b]:
                order[rank] = 0.0 if b == 0 else float(sorted_bin[rank - before])
        out = {}
        for p in self.percentiles:
            position = (p / 100.0) * (self.n - 1)
            lo, hi = int(np.floor(position)), int(np.ceil(position))
            out[p] = _lerp(order[lo], order[hi], position - lo)
        return out
