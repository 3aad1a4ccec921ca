"""Several scores of one forecast system at once: a mapping of accumulators fed the same days (as weatherbench2's
evaluation takes a dict of metrics)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from numpy.typing import ArrayLike

# the scoring modules register their accumulators (ENSEMBLE_SCORES) on import
from precip_cvae.metrics import categorical, deterministic, extremes, probabilistic, spatial, spectral  # noqa: F401, I001
from precip_cvae.metrics._core import ENSEMBLE_SCORES, Accumulator, DeviceFields, EnsembleSettings, Fields


class Scores(Mapping[str, Accumulator]):
    """Named accumulators fed the same days; :meth:`compute` gathers their values (plus ``days`` and ``pixels``, the
    valid pixel-days) into one flat, JSON-serializable dict. Merges exactly with another of the same settings."""

    def __init__(self, accumulators: dict[str, Accumulator]):
        self.accumulators = dict(accumulators)
        self.days = 0
        self.pixels = 0

    def __getitem__(self, name: str) -> Accumulator:
        return self.accumulators[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.accumulators)

    def __len__(self) -> int:
        return len(self.accumulators)

    def accumulate(self, ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add fields: ``ens`` (K, H, W) or (N, K, H, W) mm/day, ``obs`` (H, W) or (N, H, W), ``mask`` (H, W)."""
        self.add(Fields(ens, obs, mask))

    def add(self, fields: Fields) -> None:
        self.days += fields.n_fields
        self.pixels += fields.n
        for accumulator in self.accumulators.values():
            accumulator.accum(fields)

    def add_tensors(self, ens, obs, mask=None) -> None:
        """Add a batch of fields given as torch tensors: ``ens`` (N, K, H, W), ``obs`` (N, H, W) mm/day, ``mask`` bool
        broadcastable to ``obs``. On an accelerator they are scored where they are (:meth:`add_device`: no copy to the
        host, no single-threaded NumPy); on a CPU day by day in NumPy (:meth:`add`): as fast there (2.7 ms per
        validation day either way at the reference geometry, K = 2, 2 cores), and it does not slow down when another
        process shares the cores (torch's threads then took 50 × longer). The same sums either way."""
        import torch

        if obs.device.type != "cpu":
            self.add_device(DeviceFields(ens, obs, mask))
            return
        e, o = ens.detach().float().numpy(), obs.detach().float().numpy()
        m = None if mask is None else mask.detach().to(torch.bool).expand(obs.shape).numpy()
        for i in range(o.shape[0]):
            self.add(Fields(e[i], o[i], None if m is None else m[i]))

    def add_device(self, fields: DeviceFields) -> None:
        """:meth:`add` for a batch of torch tensors, scored on their device by each accumulator's ``accum_device``
        (CRPS, TwCRPS, Deterministic and Intensities have one; the same sums as :meth:`add` day by day)."""
        missing = [type(a).__name__ for a in self.accumulators.values() if not hasattr(a, "accum_device")]
        if missing:
            raise TypeError(f"no device path for {', '.join(missing)}: score these with Scores.add")
        self.days += fields.n_fields
        self.pixels += fields.n
        for accumulator in self.accumulators.values():
            accumulator.accum_device(fields)

    def merge(self, other: Scores) -> None:
        if list(other) != list(self):
            raise ValueError("cannot merge scores of different accumulators")
        for name, accumulator in self.accumulators.items():
            accumulator.merge(other[name])
        self.days += other.days
        self.pixels += other.pixels

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for accumulator in self.accumulators.values():
            out.update(accumulator.compute())
        out.update(days=int(self.days), pixels=int(self.pixels))
        return {k: (float(v) if isinstance(v, float) else v) for k, v in out.items()}


class EnsembleScores(Scores):
    """Everything `evaluate` scores for one ensemble system, day by day, in mm/day over each day's effective mask;
    memory independent of the number of days.

    Parameters
    ----------
    K : int, members per day (>= 2)
    thresholds : dict label -> mm/day; must hold ``"P95"`` and ``"P99"``. Every label gets twCRPS, CSI, SEDI and
        FSS; ``"P95"`` is also the tail of ``MAE_tail``.
    pools : block sides (pixels) of the pooled CRPS
    fss_windows : box sides (pixels) of the FSS
    quantiles : levels of the quantile biases
    wet : float, mm/day, wet-day threshold
    rng_seed : int >= 0, seed of the rank histogram's tie-breaking (merge-invariant: see :class:`RankHistogram`)

    Notes
    -----
    The deterministic scores (``MAE_all``, ``MAE_tail``, ``RMSE_all``, ``mass_bias``) are those of the pixelwise
    ensemble median; ``MAE_member`` is the MAE of one member, averaged over members. The accumulators are those the
    metrics modules register (:data:`~precip_cvae.metrics._core.ENSEMBLE_SCORES`); keys of :meth:`compute` are
    theirs plus ``days``, ``pixels`` and ``K``.
    """

    def __init__(
        self,
        K: int,
        thresholds: dict[str, float],
        pools: Sequence[int] = (4, 16),
        fss_windows: Sequence[int] = (1, 5, 11),
        quantiles: Sequence[float] = (0.95, 0.99, 0.999),
        wet: float = 1.0,
        rng_seed: int = 0,
    ):
        if K < 2:
            raise ValueError("EnsembleScores needs K >= 2 members (fair CRPS, spread)")
        missing = {"P95", "P99"} - set(thresholds)
        if missing:
            raise ValueError(f"thresholds lacks {sorted(missing)}")
        self.K = int(K)
        settings = EnsembleSettings(
            self.K, {str(k): float(v) for k, v in thresholds.items()}, tuple(pools), tuple(fss_windows),
            tuple(quantiles), float(wet), int(rng_seed),
        )  # fmt: skip
        super().__init__({name: build(settings) for name, build in ENSEMBLE_SCORES.items()})

    def accumulate(self, ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add one day: ``ens`` (K, H, W) mm/day, ``obs`` (H, W) mm/day, ``mask`` (H, W) bool or None."""
        f = Fields(ens, obs, mask)
        if f.obs.ndim != 2 or f.ens.shape != (self.K, *f.obs.shape):
            raise ValueError(f"expected ens (K={self.K}, H, W) and obs (H, W), got {f.ens.shape} and {f.obs.shape}")
        self.add(f)

    def compute(self) -> dict[str, Any]:
        return {**super().compute(), "K": self.K}
