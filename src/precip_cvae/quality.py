"""The quality gate between generation and export: every check in mm/day over valid land pixels.

A sample is rejected when its land total is too small or too large against the real day's (the reference's
``--min_threshold``), its wet fraction falls outside the band observed on days of the same category, its
peak exceeds a multiple of the observed record, it is a near copy of the real day, it is flat (far less
spatial variability than the real day), or it nearly duplicates an already accepted sample of the same day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from precip_cvae.config import GateConfig

WET_MM_PER_DAY = 0.1


@dataclass(frozen=True)
class Climatology:
    """What the observations say: wet-fraction bands per category and the record peak (mm/day)."""

    wet_band: dict[str, tuple[float, float]]
    record_max: float

    @classmethod
    def from_days(
        cls,
        wet_fraction: np.ndarray,
        categories: list[str],
        record_max: float,
        margin: float,
    ) -> Climatology:
        """Bands from observed wet fractions (land pixels >= 0.1 mm/day) of training days, per category."""
        wet_fraction = np.asarray(wet_fraction, dtype=float)
        cats = np.asarray(categories)
        bands = {}
        for category in ("dry", "moderate", "heavy"):
            values = wet_fraction[(cats == category) & np.isfinite(wet_fraction)]
            if values.size == 0:
                values = wet_fraction[np.isfinite(wet_fraction)]
            lo, hi = np.percentile(values, [5, 95]) if values.size else (0.0, 1.0)
            bands[category] = (max(0.0, float(lo) - margin), min(1.0, float(hi) + margin))
        return cls(bands, float(record_max))


def mass_ratio(sample_mm: np.ndarray, real_mm: np.ndarray, use: np.ndarray) -> float:
    """A sample's total over the pixels ``use`` ÷ the real day's (float64): 1 for two dry fields, inf for rain on a
    dry day. The gate's ``mass_ratio`` (``use``: valid land pixels where the real day has data)."""
    s = float(sample_mm[use].astype(np.float64).sum())
    r = float(real_mm[use].astype(np.float64).sum())
    return s / r if r > 0 else (float("inf") if s > 0 else 1.0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _failures(
    s: np.ndarray, numbers: dict, band: tuple[float, float], category: str, climatology: Climatology, config: GateConfig
) -> list[tuple[str, str]]:
    """(code, reason) of every check a sample fails."""
    out = []
    if not np.isfinite(s).all() or (s < 0).any():
        out.append(("invalid", "negative or non-finite values"))
    ratio = numbers["mass_ratio"]
    if ratio < config.min_mass_ratio:
        out.append(("low_mass", f"mass ratio {ratio:.3g} < {config.min_mass_ratio:g}"))
    if ratio > config.max_mass_ratio:
        out.append(("high_mass", f"mass ratio {ratio:.3g} > {config.max_mass_ratio:g}"))
    wet = numbers["wet_fraction"]
    if not band[0] <= wet <= band[1]:
        out.append(
            ("wet_fraction", f"wet fraction {wet:.2f} outside the {category} band [{band[0]:.2f}, {band[1]:.2f}]")
        )
    peak, record = numbers["peak_mm_per_day"], climatology.record_max
    if peak > config.peak_factor * record:
        out.append(("peak", f"peak {peak:.1f} mm/day > {config.peak_factor:g} x record {record:.1f} mm/day"))
    if (
        numbers["correlation_with_real"] >= config.copy_correlation
        and numbers["difference_to_real"] <= config.copy_difference
    ):
        out.append(("copy", "a copy of the real day"))
    if numbers["variability_ratio"] < config.min_variability:
        out.append(("flat", f"spatial std {numbers['variability_ratio']:.2f} x the real day's: a flat field"))
    closest = numbers["min_difference_to_accepted"]
    if closest is not None and closest < config.min_diversity:
        out.append(("duplicate", "nearly identical to another accepted sample of the same day"))
    return out


def assess_day(
    samples_mm: np.ndarray,
    real_mm: np.ndarray,
    land: np.ndarray,
    category: str,
    climatology: Climatology,
    config: GateConfig,
) -> list[dict]:
    """The gate's verdict on each of the K samples of one day, with the numbers behind it.

    Parameters
    ----------
    samples_mm : (K, H, W) mm/day
    real_mm : (H, W) mm/day of the real day (NaN where missing)
    land : (H, W) bool valid land pixels
    category : the real day's category ("dry", "moderate", "heavy")

    Returns
    -------
    One dict per sample: "accepted" (bool), "codes" (low_mass, high_mass, wet_fraction, peak, copy, flat,
    duplicate, invalid), "reasons" (the same in words) and the numbers: "mass_ratio", "wet_fraction",
    "peak_mm_per_day", "correlation_with_real", "difference_to_real", "variability_ratio",
    "min_difference_to_accepted".
    Samples are taken in order; diversity is checked against the samples accepted before.
    """
    use = land & np.isfinite(real_mm)
    real = real_mm[use].astype(np.float64)
    real_mean = max(float(real.mean()) if real.size else 0.0, WET_MM_PER_DAY)
    band = climatology.wet_band.get(category, (0.0, 1.0))
    accepted: list[np.ndarray] = []
    verdicts = []
    for sample in samples_mm:
        s = sample[use].astype(np.float64)
        numbers = {
            "mass_ratio": mass_ratio(sample, real_mm, use),
            "wet_fraction": float((s >= WET_MM_PER_DAY).mean()) if s.size else 0.0,
            "peak_mm_per_day": float(s.max()) if s.size else 0.0,
            "correlation_with_real": _pearson(s, real),
            "difference_to_real": float(np.abs(s - real).mean() / real_mean) if s.size else 0.0,
            "variability_ratio": float(s.std() / real.std()) if real.size and real.std() > 0 else 1.0,
        }
        numbers["min_difference_to_accepted"] = (
            min(float(np.abs(s - other).mean() / real_mean) for other in accepted) if accepted else None
        )
        failures = _failures(s, numbers, band, category, climatology, config)
        codes = [code for code, _ in failures]
        reasons = [text for _, text in failures]
        if not reasons:
            accepted.append(s)
        verdicts.append({"accepted": not reasons, "codes": codes, "reasons": reasons, **numbers})
    return verdicts


#: A mean mass ratio of the accepted samples further from 1 than this is reported as a bias (see :func:`summarize`).
MASS_BIAS_WARNING = 0.10


def mean_mass_ratio(records: list[dict], key: str = "mass_ratio") -> float | None:
    """The mean mass ratio (land total ÷ the real day's) of the accepted samples among ``records`` (the gate's
    verdicts, or a sample store's manifest records); None when none records a finite one. ``key``
    ``drawn_mass_ratio``: the same before `sample` rescaled them (``sampling.preserve_mass``)."""
    ratios = [float(r[key]) for r in records if r.get("accepted")
              and isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]  # fmt: skip
    return float(np.mean(ratios)) if ratios else None


def summarize(verdicts: list[dict]) -> dict:
    """Counts: accepted, rejected, and rejections per reason (a sample may have several); and the mean mass ratio of
    the accepted samples (land total ÷ the real day's; ``drawn_mass_ratio`` the same before `sample` rescaled them,
    None where the verdicts do not record it), which no per-sample bound catches when every sample is, say,
    10 % too wet: augmentation would teach a downstream model that bias. ``mass_bias`` is a sentence saying so when
    the mean is further than :data:`MASS_BIAS_WARNING` from 1, else None."""
    reasons: dict[str, int] = {}
    for v in verdicts:
        for code in v["codes"]:
            reasons[code] = reasons.get(code, 0) + 1
    accepted = sum(v["accepted"] for v in verdicts)
    mean_ratio = mean_mass_ratio(verdicts)
    bias = None
    if mean_ratio is not None and abs(mean_ratio - 1.0) > MASS_BIAS_WARNING:
        bias = (f"the accepted samples carry {mean_ratio:.2f} x their real day's land total on average: "
                f"{'wetter' if mean_ratio > 1 else 'drier'} than the days they stand for (augmenting with them teaches "
                "that bias; `sample --preserve-mass domain`, or `cells` on data prepared with --coarsen, "
                "rescales them)")  # fmt: skip
    return {"samples": len(verdicts), "accepted": accepted, "rejected": len(verdicts) - accepted, "reasons": reasons,
            "accepted_mass_ratio": mean_ratio, "drawn_mass_ratio": mean_mass_ratio(verdicts, "drawn_mass_ratio"),
            "mass_bias": bias}  # fmt: skip
