"""Streaming quantiles of non-negative values (precipitation in mm/day) through one log-binned histogram:
:class:`LogHistogram` (approximate, one pass, mergeable; the metrics' quantiles) and :class:`StreamingPercentiles`
(exact, two passes over the same bins; prepare's thresholds)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


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
        self.histogram = LogHistogram(lower, upper, log_step=bin_width)
        self._needed: dict[int, list[int]] | None = None
        self._kept: dict[int, list[np.ndarray]] = {}

    @property
    def counts(self) -> np.ndarray:
        return self.histogram.counts

    @property
    def n(self) -> int:
        return self.histogram.n

    def count(self, values: np.ndarray) -> None:
        """Pass 1: add finite, non-negative values (any shape)."""
        self.histogram.add(values)

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
        values = values[np.isfinite(values)]
        bins = self.histogram.bin_index(values)
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


class LogHistogram:
    """Streaming histogram of non-negative intensities for quantiles without holding the values.

    Bins are log-spaced with relative width ``rel_width`` between ``vmin`` and ``vmax`` (defaults: 0.1 % from
    1e-3 to 1e4 mm/day: 16,127 bins, 129 kB), plus one bin for values <= 0 (dry), one for (0, vmin) and one for
    values >= vmax. An order statistic is placed inside its bin (the bin's values spread evenly, geometrically in
    the log bins, clipped to the observed min and max) and quantiles interpolate linearly between order statistics
    as ``numpy.quantile`` does, so they are within ``rel_width`` (relative) of the exact value above ``vmin`` and
    within ``vmin`` (absolute) below.
    """

    def __init__(self, vmin: float = 1e-3, vmax: float = 1e4, rel_width: float = 1e-3, log_step: float | None = None):
        self._log_step = math.log1p(rel_width) if log_step is None else float(log_step)
        self.vmin, self.vmax, self.rel_width = float(vmin), float(vmax), math.expm1(self._log_step)
        self.n_log = math.ceil(math.log(vmax / vmin) / self._log_step)
        self.counts = np.zeros(self.n_log + 3, np.int64)  # [<=0, (0, vmin), log bins..., >=vmax]
        self.min, self.max = math.inf, -math.inf

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def add(self, values: ArrayLike) -> None:
        """Add values (any shape, mm/day); non-finite ones are ignored."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if not x.size:
            return
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        self.counts += np.bincount(self.bin_index(x), minlength=self.counts.size)

    def bin_index(self, x: np.ndarray) -> np.ndarray:
        """The bin of each of the finite values ``x`` (1-D)."""
        idx = np.ones(x.size, np.int64)
        idx[x <= 0] = 0
        pos = x >= self.vmin
        k = np.floor(np.log(x[pos] / self.vmin) / self._log_step).astype(np.int64)
        idx[pos] = 2 + np.minimum(k, self.n_log)  # n_log + 2 is the overflow bin
        return idx

    def add_device(self, values) -> None:
        """:meth:`add` for a torch tensor, binned where it is (float64); only the counts come back."""
        import torch

        x = values.reshape(-1).to(torch.float64)
        x = x[torch.isfinite(x)]
        if not x.numel():
            return
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        idx = torch.ones(x.shape, dtype=torch.int64, device=x.device)
        idx[x <= 0] = 0
        pos = x >= self.vmin
        k = torch.floor(torch.log(x[pos] / self.vmin) / self._log_step).to(torch.int64)
        idx[pos] = 2 + k.clamp_max(self.n_log)
        self.counts += torch.bincount(idx, minlength=self.counts.size).cpu().numpy()

    def merge(self, other: LogHistogram) -> None:
        """Add another histogram with the same bins."""
        if (other.vmin, other.vmax, other._log_step) != (self.vmin, self.vmax, self._log_step):
            raise ValueError("histograms with different bins")
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def _bin_range(self, b: int) -> tuple[float, float]:
        if b == 0:
            lo, hi = -math.inf, 0.0
        elif b == 1:
            lo, hi = 0.0, self.vmin
        elif b == self.n_log + 2:
            lo, hi = self.vmax, math.inf
        else:
            lo = self.vmin * math.exp((b - 2) * self._log_step)
            hi = lo * math.exp(self._log_step)
        # the observed extremes narrow the open-ended and the extreme bins
        return max(lo, self.min), min(hi, self.max)

    def _order_statistic(self, j: int, cum: np.ndarray) -> float:
        """Approximate j-th smallest value (0-based): spread the values of its bin evenly over the bin."""
        b = int(np.searchsorted(cum, j, side="right"))
        frac = (j - (cum[b] - self.counts[b]) + 0.5) / self.counts[b]
        lo, hi = self._bin_range(b)
        value = lo * (hi / lo) ** frac if 2 <= b < self.n_log + 2 else lo + (hi - lo) * frac
        return min(max(value, self.min), self.max)

    def quantile(self, q: float) -> float:
        """Approximate ``numpy.quantile(values, q)`` (mm/day, linear interpolation between order statistics); NaN
        when empty."""
        n = self.n
        if n == 0:
            return math.nan
        cum = np.cumsum(self.counts)
        rank = q * (n - 1)  # 0-based position in the sorted values
        j = min(int(math.floor(rank)), n - 1)
        low = self._order_statistic(j, cum)
        if rank == j:
            return low
        return low + (rank - j) * (self._order_statistic(j + 1, cum) - low)
