"""Verification metrics for daily precipitation, one module per kind (the pysteps layout).

- :mod:`~precip_cvae.metrics.probabilistic`: CRPS (fair), threshold-weighted and pooled CRPS, rank histogram,
  spread-skill;
- :mod:`~precip_cvae.metrics.deterministic`: MAE, MAE above a threshold, RMSE, mass bias (of a prediction or an
  ensemble median);
- :mod:`~precip_cvae.metrics.categorical`: contingency table, CSI, SEDI;
- :mod:`~precip_cvae.metrics.spatial`: fractions skill score;
- :mod:`~precip_cvae.metrics.spectral`: RAPSD and spectral ratios;
- :mod:`~precip_cvae.metrics.extremes`: quantiles of intensities, wet-day frequency, Rx1day;
- :mod:`~precip_cvae.metrics.scores`: a mapping of accumulators fed the same days (:class:`EnsembleScores`).

Every score is an accumulator (``init / accum / merge / compute``, see :mod:`~precip_cvae.metrics._core` for the
conventions); its function is that accumulator run once. A new score is one class in one of these modules, and one
entry in the mapping that should compute it.
"""

from precip_cvae.data.quantiles import LogHistogram
from precip_cvae.metrics._core import Accumulator, DeviceFields, Fields, Mean
from precip_cvae.metrics.categorical import Categorical, contingency, csi, sedi
from precip_cvae.metrics.deterministic import Deterministic, mae, mae_tail, mass_bias, rmse
from precip_cvae.metrics.extremes import Intensities, Rx1day, quantile_bias, rx1day, rx1day_bias, wet_day_frequency
from precip_cvae.metrics.probabilistic import (
    CRPS,
    PooledCRPS,
    RankHistogram,
    SpreadSkill,
    TwCRPS,
    crps_ensemble,
    crps_mean,
    pooled_crps,
    rank_histogram,
    rank_histogram_flatness,
    spread_skill,
    twcrps_ensemble,
)
from precip_cvae.metrics.scores import EnsembleScores, Scores
from precip_cvae.metrics.spatial import FSS, fss
from precip_cvae.metrics.spectral import SPECTRAL_BANDS, Spectrum, rapsd, spectrum_log_ratio

__all__ = [
    "CRPS",
    "FSS",
    "SPECTRAL_BANDS",
    "Accumulator",
    "Categorical",
    "Deterministic",
    "DeviceFields",
    "EnsembleScores",
    "Fields",
    "Intensities",
    "LogHistogram",
    "Mean",
    "PooledCRPS",
    "RankHistogram",
    "Rx1day",
    "Scores",
    "Spectrum",
    "SpreadSkill",
    "TwCRPS",
    "contingency",
    "crps_ensemble",
    "crps_mean",
    "csi",
    "fss",
    "mae",
    "mae_tail",
    "mass_bias",
    "pooled_crps",
    "quantile_bias",
    "rank_histogram",
    "rank_histogram_flatness",
    "rapsd",
    "rmse",
    "rx1day",
    "rx1day_bias",
    "sedi",
    "spectrum_log_ratio",
    "spread_skill",
    "twcrps_ensemble",
    "wet_day_frequency",
]
