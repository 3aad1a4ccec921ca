"""Spectral verification: radially averaged power spectra (RAPSD) of samples against observations."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from precip_cvae.metrics._core import Accumulator, DeviceFields, Fields, _f64, _mean, ensemble_score

#: Wavelength bands of :func:`spectrum_log_ratio` used by :class:`EnsembleScores`, in cycles per pixel:
#: large scales (wavelength > 16 px), medium (4-16 px), small (< 4 px).
SPECTRAL_BANDS: tuple[tuple[float, float], ...] = ((0.0, 1 / 16), (1 / 16, 1 / 4), (1 / 4, math.inf))


class Spectrum(Accumulator):
    """Mean power spectra of the observations and of the members (field by field, missing pixels filled with the
    field's mean and the same pixels missing in observation and members): ``rapsd_freqs``, ``rapsd_obs``,
    ``rapsd_sim`` and ``spectrum_log_ratio`` over ``bands`` (cycles per pixel)."""

    def __init__(self, bands: Sequence[tuple[float, float]] = SPECTRAL_BANDS):
        self.bands = tuple(tuple(b) for b in bands)
        self.freqs: np.ndarray | None = None
        self.power_obs: np.ndarray | None = None  # sum over fields of the spectrum
        self.power_sim: np.ndarray | None = None  # sum over fields of the member-mean spectrum
        self.fields = 0

    def settings(self) -> tuple:
        return self.bands

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        for ens, obs, v in f.fields():
            freqs, power = rapsd(np.where(v, np.concatenate([obs[None], ens]), np.nan))
            if self.power_obs is None:
                self.freqs, self.power_obs, self.power_sim = freqs, np.zeros(freqs.size), np.zeros(freqs.size)
            self.power_obs += power[0]
            self.power_sim += power[1:].mean(axis=0)
            self.fields += 1

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors: the spectra where they are (fields without a valid pixel left
        out, as :meth:`accum` leaves out such a day), their sums here."""
        import torch

        days = f.v.flatten(1).any(dim=1)
        if not bool(days.any()):
            return
        v = f.v[days][:, None]
        freqs, power = rapsd_device(torch.where(v, torch.cat([f.obs[days][:, None], f.ens[days]], dim=1), math.nan))
        if self.power_obs is None:
            self.freqs, self.power_obs, self.power_sim = freqs, np.zeros(freqs.size), np.zeros(freqs.size)
        self.power_obs += power[:, 0].sum(dim=0).cpu().numpy()
        self.power_sim += power[:, 1:].mean(dim=1).sum(dim=0).cpu().numpy()
        self.fields += int(days.sum())

    def _merge(self, other: Spectrum) -> None:  # type: ignore[override]
        if other.power_obs is None:
            return
        if self.power_obs is None:
            self.freqs, self.power_obs, self.power_sim = other.freqs, other.power_obs.copy(), other.power_sim.copy()
        else:
            self.power_obs += other.power_obs
            self.power_sim += other.power_sim
        self.fields += other.fields

    def compute(self) -> dict[str, Any]:
        if self.power_obs is None:
            return {
                "rapsd_freqs": [],
                "rapsd_obs": [],
                "rapsd_sim": [],
                "spectrum_log_ratio": [math.nan] * len(self.bands),
            }
        p_obs, p_sim = self.power_obs / self.fields, self.power_sim / self.fields
        return {
            "rapsd_freqs": [float(f) for f in self.freqs],
            "rapsd_obs": [float(p) for p in p_obs],
            "rapsd_sim": [float(p) for p in p_sim],
            "spectrum_log_ratio": spectrum_log_ratio(p_sim, p_obs, self.freqs, self.bands),
        }


@lru_cache(maxsize=16)
def _radial_bins(H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the half-plane (``rfft2``) grid of an H x W field: frequencies of the radial bins, the flat indices of the
    kept coefficients sorted by bin, how many full-plane coefficients each stands for (1 or 2: a real field's
    spectrum is symmetric, |F(-k)| = |F(k)|, and a coefficient's mirror falls in the same radial bin), the start of
    each bin in that order, and the full-plane coefficient count per bin (all > 0)."""
    L = max(H, W)
    Wh = W // 2 + 1
    fy, fx = np.meshgrid(np.fft.fftfreq(H), np.fft.rfftfreq(W), indexing="ij")
    k = np.rint(np.hypot(fy, fx) * L).astype(np.int64).ravel()  # bins of width 1/L centred on k/L
    # columns 1 .. ceil(W/2)-1 have their mirror in the other half; column 0 and (even W) the Nyquist one do not
    col = np.arange(Wh)
    mult = np.broadcast_to(np.where((col > 0) & (2 * col != W), 2, 1), (H, Wh)).ravel()
    n_bins = L // 2
    sel = np.flatnonzero((k >= 1) & (k <= n_bins))  # drop the mean and the corners beyond 0.5 cycles/px
    order = sel[np.argsort(k[sel], kind="stable")]
    sorted_k = k[order]
    starts = np.searchsorted(sorted_k, np.arange(1, n_bins + 1))
    counts = np.add.reduceat(mult[order], starts) if order.size else np.zeros(0, np.int64)
    freqs = np.arange(1, n_bins + 1) / L
    weights = mult[order].astype(np.float64)
    for a in (freqs, order, weights, starts, counts):
        a.flags.writeable = False
    return freqs, order, weights, starts, counts


def rapsd(field: ArrayLike, fill: Literal["mean", "zero"] = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density.

    Non-finite pixels (outside the domain) are filled with the field's mean over its finite pixels (``fill="mean"``,
    default: the smallest step at the domain's edge, so the least spurious small-scale power) or with 0 mm/day.
    Power is ``|FFT|^2 / (H W)`` (white noise of variance s^2 has power s^2 at every frequency), averaged over the
    coefficients whose radial frequency ``sqrt(fx^2 + fy^2)`` falls in bins of width ``1/max(H, W)`` centred on
    ``k/max(H, W)``, k = 1 .. max(H, W)//2; the zero frequency and the corners beyond 0.5 are left out.

    Parameters
    ----------
    field : (..., H, W) mm/day; leading axes are independent fields
    fill : "mean" or "zero"

    Returns
    -------
    freqs : (n_bins,) cycles per pixel, in (0, 0.5]
    power : (..., n_bins) (mm/day)^2
    """
    x = _f64(field)
    H, W = x.shape[-2:]
    finite = np.isfinite(x)
    if fill == "mean":
        n = finite.sum(axis=(-2, -1), keepdims=True)
        total = np.where(finite, x, 0.0).sum(axis=(-2, -1), keepdims=True)
        value = total / np.maximum(n, 1)  # an all-missing field becomes 0
    elif fill == "zero":
        value = 0.0
    else:
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    x = np.where(finite, x, value)
    coef = np.fft.rfft2(x)
    power = ((coef.real**2 + coef.imag**2) / (H * W)).reshape(*x.shape[:-2], -1)
    freqs, order, weights, starts, counts = _radial_bins(H, W)
    if freqs.size == 0:
        return freqs.copy(), np.zeros(x.shape[:-2] + (0,))
    return freqs.copy(), np.add.reduceat(power[..., order] * weights, starts, axis=-1) / counts


def rapsd_device(field) -> tuple[np.ndarray, Any]:
    """:func:`rapsd` (``fill="mean"``) of a torch tensor (..., H, W), where it is: freqs (NumPy), power (a tensor)."""
    import torch

    x = field.to(torch.float64)
    H, W = x.shape[-2:]
    finite = torch.isfinite(x)
    n = finite.sum(dim=(-2, -1), keepdim=True)
    value = torch.where(finite, x, 0.0).sum(dim=(-2, -1), keepdim=True) / n.clamp(min=1)
    coef = torch.fft.rfft2(torch.where(finite, x, value))
    power = ((coef.real**2 + coef.imag**2) / (H * W)).reshape(*x.shape[:-2], -1)
    freqs, order, weights, starts, counts = _radial_bins(H, W)
    if freqs.size == 0:
        return freqs.copy(), power.new_zeros(*x.shape[:-2], 0)
    bins = torch.tensor(np.repeat(np.arange(freqs.size), np.diff(starts, append=order.size)), device=x.device)
    weighted = power[..., torch.tensor(order, device=x.device)] * torch.tensor(weights, device=x.device)
    sums = power.new_zeros(*x.shape[:-2], freqs.size).index_add_(-1, bins, weighted)
    return freqs.copy(), sums / torch.tensor(counts, device=x.device)


def spectrum_log_ratio(
    sim_power: ArrayLike, obs_power: ArrayLike, freqs: ArrayLike, bands: Iterable[tuple[float, float]]
) -> list[float]:
    """Mean of ``log10(sim / obs)`` over the frequencies of each band: 0 = right amount of variance at those scales.

    Parameters
    ----------
    sim_power, obs_power : (n_bins,) power spectra, as from :func:`rapsd`
    freqs : (n_bins,) cycles per pixel
    bands : sequence of (f_lo, f_hi), cycles per pixel; a band holds ``f_lo <= f < f_hi``

    Returns
    -------
    list of float, one per band (NaN for a band without a frequency with positive power in both)
    """
    sim, obs, freqs = _f64(sim_power), _f64(obs_power), _f64(freqs)
    ok = (sim > 0) & (obs > 0) & np.isfinite(sim) & np.isfinite(obs)
    log_ratio = np.log10(np.where(ok, sim, 1.0) / np.where(ok, obs, 1.0))
    return [_mean(log_ratio[ok & (freqs >= lo) & (freqs < hi)]) for lo, hi in bands]


ensemble_score("spectrum", lambda s: Spectrum())
