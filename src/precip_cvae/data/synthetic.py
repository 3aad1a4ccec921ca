"""A synthetic downscaling benchmark with a known truth: fake daily precipitation on a coastal, hilly domain.

What is generated
-----------------
* Static terrain on the high-resolution (hr) grid: a sea along the western side behind an irregular
  coast, a mountain ridge parallel to the coast with power-law rough terrain, a regular lat/lon grid
  (0.04 degree cells, ~4 km) and a low-resolution (lr) grid over the same domain whose cell centres
  are the centres of the hr blocks (H/h need not be an integer).
* A low-dimensional large-scale weather state per day (see :data:`STATE_NAMES`), generated once,
  sequentially from the seed: AR(1) anomalies with a seasonal cycle in temperature and moisture, a
  wind vector, a pressure anomaly, a storminess with rare heavy-tailed bursts and a storm centre.
* The expected precipitation ``mu`` (mm/day) on the hr grid, a deterministic function of the state and
  the terrain: a broad background plus a Gaussian blob around the storm centre, scaled by moisture and
  storminess, times an orographic factor (more rain on high ground and on windward slopes, less in the
  lee). ``mu`` is exactly the conditional mean ``E[pr | state]`` of the realized field.
* The realized precipitation: two Gaussian random fields with power-law spectra (FFT-filtered white
  noise, power ~ k**-beta) give a wet/dry mask (thresholded so the local wet probability grows with
  ``mu``) and a lognormal intensity. This small-scale part is random given the state; member 0 is the
  truth, members 1..K are independent redraws (the oracle ensemble, a floor for any model's CRPS).
* C coarse predictors on the lr grid computed from the state and the terrain only, plus their own
  noise, never from the realized field: X holds no information about the small-scale draw.

Every random number comes from ``np.random.default_rng([seed, day, member, stream])`` (or the state
and terrain streams), so any range of days gives identical values whatever the chunking.

Heavy days: a day is *heavy* when its land-mean precipitation exceeds :data:`HEAVY_FACTOR` times the
90th percentile of the daily land means of the record (:func:`heavy_days`). The storm bursts make
about 2-5 % of days heavy by this criterion.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, special
from tqdm import tqdm

from precip_cvae.data import srdrn
from precip_cvae.data.normalize import PREDICTOR_STD_FLOOR, finalize_target_stats, target_to_normalized
from precip_cvae.data.source import ORACLE_FILE
from precip_cvae.errors import InputError
from precip_cvae.fileio import create_npy, save_npy, staged_directory, write_json, write_text

if TYPE_CHECKING:
    import netCDF4

# Stream ids: the last element of every rng key, so no two purposes ever share random numbers.
_STREAM_SMALL_SCALE = 1
_STREAM_PREDICTOR_NOISE = 2
_STREAM_STATE = 3
_STREAM_TERRAIN = 4
_STREAM_EXTRA_WEIGHTS = 5

#: Grid spacing of the hr grid in degrees (both directions) and its nominal size in km.
HR_SPACING_DEG = 0.04
HR_SPACING_KM = 4.0
#: Domain centre (degrees north, degrees east). An invented place, not a real coast.
DOMAIN_CENTRE = (45.0, 8.0)

#: A pixel is dry below this amount (mm/day).
WET_THRESHOLD_MM = 0.1
#: Heavy day: land-mean precipitation > HEAVY_FACTOR x the P90 of daily land means of the record.
HEAVY_FACTOR = 2.0

#: Base channels (names and units); channels beyond these are ``extra_1``, ``extra_2``, ... (units "1").
BASE_CHANNELS = (
    ("pr_coarse", "mm/day"),
    ("hus850", "kg kg-1"),
    ("ua850", "m s-1"),
    ("va850", "m s-1"),
    ("psl", "Pa"),
    ("ta850", "K"),
)

#: Columns of :attr:`SyntheticBenchmark.state`.
STATE_NAMES = (
    "ta850_K",  # domain-mean 850 hPa temperature
    "rh",  # relative humidity at 850 hPa (0-1)
    "hus850_kg_kg",  # specific humidity at 850 hPa
    "ua850_m_s",  # domain-mean wind, eastward
    "va850_m_s",  # domain-mean wind, northward
    "psl_anomaly_Pa",  # domain-mean sea-level pressure anomaly
    "storm",  # storminess multiplier (includes bursts)
    "burst",  # burst multiplier (1 on ordinary days)
    "centre_y",  # storm centre, fraction of the domain height from the south edge
    "centre_x",  # storm centre, fraction of the domain width from the west edge
    "radius",  # storm radius, fraction of the domain
)

# Small-scale field parameters.
_BETA_MASK = 3.0  # spectral slope of the field thresholded into wet/dry
_BETA_INTENSITY = 2.6  # spectral slope of the second intensity field
_K_LOW_CUT = 1.0 / 48.0  # cycles/pixel: below, the spectrum flattens (larger scales belong to mu)
_SIGMA_LOG = 0.65  # std of the log intensity
_RHO_MASK = 0.6  # correlation of log intensity with the mask field: rain is heavier inside wet areas
_WET_SCALE_MM = 2.0  # p_wet = 1 - exp(-mu / _WET_SCALE_MM)
_P_WET_RANGE = (0.01, 0.97)
_BURST_PROBABILITY = 0.03  # chance per day that a storm burst starts
_BURST_BASE = 3.5  # smallest burst multiplier; Pareto tail above it
_BURST_TAIL_INDEX = 4.0
_MU_SATURATION_MM = 60.0
_PRECIP_SCALE_MM = 2.8  # mu scale (mm/day) at reference moisture, storminess 1, blob peak, flat land

_BATCH_DAYS = 32  # days per internal block: bounds the memory of the FFT work arrays


@dataclass(frozen=True)
class SynthOptions:
    """Options of the synthetic benchmark.

    Attributes
    ----------
    days : number of days (training + test)
    test_fraction : last fraction of the days (in time) forming the test period
    hr_shape : (H, W) high-resolution grid, ~4 km cells
    lr_shape : (h, w) low-resolution predictor grid covering the same domain
    channels : number C of predictor channels
    oracle_members : number K of redraws of the small-scale part per test day
    seed : non-negative integer seed of every random stream
    start_date : date of the first day (ISO, YYYY-MM-DD)
    """

    days: int = 3000
    test_fraction: float = 0.2
    hr_shape: tuple[int, int] = (156, 132)
    lr_shape: tuple[int, int] = (13, 11)
    channels: int = 6
    oracle_members: int = 16
    seed: int = 0
    start_date: str = "1981-01-01"


def _rng(seed: int, day: int, member: int, stream: int) -> np.random.Generator:
    # Four-element keys always: SeedSequence pads short keys with zeros, so [s, 3] would equal [s, 3, 0, 0].
    return np.random.default_rng([seed, day, member, stream])


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_shape(name: str, value: object, minimum: int) -> tuple[int, int]:
    try:
        shape = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"SynthOptions.{name}: expected two integers, got {value!r}") from None
    if len(shape) != 2 or not all(_is_int(v) for v in shape):
        raise InputError(f"SynthOptions.{name}: expected two integers, got {value!r}")
    if min(shape) < minimum:
        raise InputError(f"SynthOptions.{name}: each size must be >= {minimum}, got {shape}")
    return int(shape[0]), int(shape[1])


def _validate(options: SynthOptions) -> tuple[tuple[int, int], tuple[int, int], np.datetime64, int]:
    """Check every option; return hr shape, lr shape, start date and the number of test days."""
    if not _is_int(options.days) or options.days < 2:
        raise InputError(f"SynthOptions.days: must be an integer >= 2, got {options.days!r}")
    tf = options.test_fraction
    if isinstance(tf, bool) or not isinstance(tf, int | float | np.floating) or not 0.0 < float(tf) < 1.0:
        raise InputError(f"SynthOptions.test_fraction: must be a number in (0, 1), got {tf!r}")
    n_test = round(options.days * float(tf))
    if n_test < 1 or options.days - n_test < 1:
        raise InputError(
            f"SynthOptions.test_fraction: {tf} of {options.days} days leaves {options.days - n_test} "
            f"training and {n_test} test days; both must be >= 1"
        )
    hr = _check_shape("hr_shape", options.hr_shape, 8)
    lr = _check_shape("lr_shape", options.lr_shape, 1)
    if lr[0] > hr[0] or lr[1] > hr[1]:
        raise InputError(f"SynthOptions.lr_shape: {lr} must not be finer than hr_shape {hr}")
    if not _is_int(options.channels) or options.channels < 1:
        raise InputError(f"SynthOptions.channels: must be an integer >= 1, got {options.channels!r}")
    if not _is_int(options.oracle_members) or options.oracle_members < 1:
        raise InputError(f"SynthOptions.oracle_members: must be an integer >= 1, got {options.oracle_members!r}")
    if not _is_int(options.seed) or options.seed < 0:
        raise InputError(f"SynthOptions.seed: must be an integer >= 0, got {options.seed!r}")
    try:
        start = np.datetime64(str(options.start_date), "D")
    except ValueError:
        raise InputError(f"SynthOptions.start_date: not a date (YYYY-MM-DD): {options.start_date!r}") from None
    if np.isnat(start):
        raise InputError(f"SynthOptions.start_date: not a date (YYYY-MM-DD): {options.start_date!r}")
    return hr, lr, start, n_test


def _aggregation_matrix(n_hr: int, n_lr: int) -> np.ndarray:
    """(n_lr, n_hr) weights of hr cells in each lr block (fractional overlaps; rows sum to 1)."""
    edges = np.arange(n_lr + 1) * (n_hr / n_lr)
    lo, hi = edges[:-1, None], edges[1:, None]
    k = np.arange(n_hr)[None, :]
    overlap = np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, None)
    return overlap / (hi - lo)


class _PowerLawFilter:
    """Unit-variance Gaussian random fields with power spectrum ~ k**-beta, by FFT filtering of white noise.

    The fields are made on a grid padded by ~25 % and cropped, so they do not wrap around the domain.
    Below ``k_low`` (cycles/pixel) the spectrum flattens: those scales are the large-scale pattern's.
    """

    def __init__(self, shape: tuple[int, int], betas: tuple[float, ...], k_low: float) -> None:
        self.shape = shape
        self.padded = (
            sfft.next_fast_len(math.ceil(shape[0] * 1.25) + 4, real=True),
            sfft.next_fast_len(math.ceil(shape[1] * 1.25) + 4, real=True),
        )
        ky = np.fft.fftfreq(self.padded[0])[:, None]
        kx_full = np.fft.fftfreq(self.padded[1])[None, :]
        kx_half = np.fft.rfftfreq(self.padded[1])[None, :]
        filters = []
        for beta in betas:
            full = (ky**2 + kx_full**2 + k_low**2) ** (-beta / 4.0)
            full[0, 0] = 0.0  # zero mean
            # Unit white noise filtered by a (full-spectrum) amplitude a has variance mean(a**2).
            norm = np.sqrt(np.mean(full**2))
            half = (ky**2 + kx_half**2 + k_low**2) ** (-beta / 4.0)
            half[0, 0] = 0.0
            filters.append(half / norm)
        self.filters = np.stack(filters).astype(np.float32)  # (F, Hp, Wp//2+1)

    def fields(self, keys: list[list[int]]) -> np.ndarray:
        """One set of fields per rng key.

        Returns
        -------
        (n, F, H, W) float32, unit variance, zero mean in expectation.
        """
        n_fields = self.filters.shape[0]
        noise = np.empty((len(keys), n_fields, *self.padded), dtype=np.float32)
        for i, key in enumerate(keys):
            np.random.default_rng(key).standard_normal((n_fields, *self.padded), dtype=np.float32, out=noise[i])
        spec = sfft.rfft2(noise, axes=(-2, -1), overwrite_x=True)
        spec *= self.filters
        out = sfft.irfft2(spec, s=self.padded, axes=(-2, -1), overwrite_x=True)
        return np.ascontiguousarray(out[..., : self.shape[0], : self.shape[1]])


def _smooth_noise_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """(n,) smooth unit-std noise with correlation length ``scale`` (in samples)."""
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 8 * int(scale) + 8), scale, mode="wrap")
    x = x[4 * int(scale) + 4 : 4 * int(scale) + 4 + n]
    return (x - x.mean()) / (x.std() + 1e-12)


class SyntheticBenchmark:
    """Synthetic daily precipitation with a known truth and an oracle ensemble.

    Parameters
    ----------
    options : :class:`SynthOptions`; a bad value raises :class:`~precip_cvae.errors.InputError` naming it.

    Attributes
    ----------
    options : the options
    n_days, n_train, n_test : days in all, in the training period (first), in the test period (last)
    dates : (n_days,) datetime64[D], consecutive days from ``options.start_date``
    land_mask : (H, W) bool, True over land
    elevation_m : (H, W) float32 metres above sea level (0 at sea)
    hr_lat, hr_lon : (H,), (W,) float64 degrees, ascending, 0.04 degree spacing
    lr_lat, lr_lon : (h,), (w,) float64 degrees, ascending, centres of the hr blocks
    variables, units : (C,) predictor names and units
    state : (n_days, len(STATE_NAMES)) float64 large-scale state, columns :data:`STATE_NAMES`
    state_names : the column names

    Notes
    -----
    All arrays of days are computed on demand from ``(seed, day, member, stream)`` keyed generators;
    nothing of size n_days x H x W is ever held. Precipitation is NaN over sea, finite and >= 0 over land.
    """

    def __init__(self, options: SynthOptions) -> None:
        (H, W), (h, w), start, n_test = _validate(options)
        self.options = options
        self.n_days = int(options.days)
        self.n_test = int(n_test)
        self.n_train = self.n_days - self.n_test
        self.dates = start + np.arange(self.n_days).astype("timedelta64[D]")
        self._seed = int(options.seed)
        self._hr = (H, W)
        self._lr = (h, w)

        lat_s = DOMAIN_CENTRE[0] - H * HR_SPACING_DEG / 2
        lon_w = DOMAIN_CENTRE[1] - W * HR_SPACING_DEG / 2
        self.hr_lat = lat_s + (np.arange(H) + 0.5) * HR_SPACING_DEG
        self.hr_lon = lon_w + (np.arange(W) + 0.5) * HR_SPACING_DEG
        self.lr_lat = lat_s + (np.arange(h) + 0.5) * (H / h) * HR_SPACING_DEG
        self.lr_lon = lon_w + (np.arange(w) + 0.5) * (W / w) * HR_SPACING_DEG
        self._agg_rows = _aggregation_matrix(H, h)  # (h, H)
        self._agg_cols_t = _aggregation_matrix(W, w).T.copy()  # (W, w)

        # Normalized coordinates (0..1 from the south / west edge) of hr pixels and lr cell centres.
        self._hr_y = ((np.arange(H) + 0.5) / H)[:, None]
        self._hr_x = ((np.arange(W) + 0.5) / W)[None, :]
        self._lr_y = ((np.arange(h) + 0.5) / h)[:, None]
        self._lr_x = ((np.arange(w) + 0.5) / w)[None, :]

        self._make_terrain()
        self._make_state()

        names = [name for name, _ in BASE_CHANNELS]
        units = [unit for _, unit in BASE_CHANNELS]
        C = int(options.channels)
        self.variables = names[:C] + [f"extra_{i + 1}" for i in range(max(0, C - len(names)))]
        self.units = units[:C] + ["1"] * max(0, C - len(units))
        n_extra = max(0, C - len(names))
        # Fixed random mixing weights of the extra channels: (n_extra, latent drivers + blob).
        n_weights = self._latent.shape[1] + 1
        self._extra_weights = np.array(
            [_rng(self._seed, i, 0, _STREAM_EXTRA_WEIGHTS).normal(size=n_weights) for i in range(n_extra)]
        ).reshape(n_extra, n_weights)

        self._filter = _PowerLawFilter((H, W), (_BETA_MASK, _BETA_INTENSITY), _K_LOW_CUT)

    # ------------------------------------------------------------------ static terrain
    def _make_terrain(self) -> None:
        H, W = self._hr
        rng = _rng(self._seed, 0, 0, _STREAM_TERRAIN)
        grf = _PowerLawFilter((H, W), (3.5, 2.4), 1.0 / max(H, W))
        smooth, rough = grf.fields([[self._seed, 0, 1, _STREAM_TERRAIN]])[0]
        y, x = np.broadcast_arrays(self._hr_y, self._hr_x)

        # Coast: sea on the west; the coast line meanders with the row and with 2-D smooth noise.
        meander = _smooth_noise_1d(rng, H, max(2.0, H / 10))[:, None]
        score = x + 0.06 * meander + 0.04 * smooth
        sea_fraction = rng.uniform(0.2, 0.3)
        coast_level = np.quantile(score, sea_fraction)
        self.land_mask = score > coast_level

        # Elevation: coastal plain rising inland, a ridge parallel to the coast, rough power-law terrain.
        inland = np.clip((score - coast_level) / (score.max() - coast_level), 0.0, 1.0)
        ridge_x = 0.5 * (1 - sea_fraction) + 0.08 * _smooth_noise_1d(rng, H, max(2.0, H / 6))[:, None]
        ridge_height = 1.0 + 0.25 * _smooth_noise_1d(rng, H, max(2.0, H / 5))[:, None]
        ridge = np.exp(-(((inland - ridge_x) / 0.16) ** 2)) * ridge_height
        raw = 500.0 * inland + 1700.0 * ridge + 300.0 * rough * (0.4 + ridge) + 150.0 * smooth
        raw *= 1.0 - np.exp(-inland / 0.04)  # taper to sea level at the coast
        raw = np.where(self.land_mask, np.maximum(raw, 0.0), 0.0)
        peak = rng.uniform(2200.0, 2900.0)
        self.elevation_m = (raw * (peak / max(raw.max(), 1e-6))).astype(np.float32)

        # Smoothed slopes (m per km); x east (column), y north (row: latitudes ascend).
        smoothed = ndimage.gaussian_filter(self.elevation_m.astype(np.float64), 1.5)
        gy, gx = np.gradient(smoothed, HR_SPACING_KM)
        self._grad_x = gx.astype(np.float32)
        self._grad_y = gy.astype(np.float32)
        slope = np.hypot(gx, gy)[self.land_mask]
        # A 10 m/s wind against the 90th-percentile slope gives an upslope index of 1.
        self._upslope_scale = float(10.0 * max(np.quantile(slope, 0.9) if slope.size else 1.0, 1e-3))
        self._height_factor = (1.0 + 0.25 * self.elevation_m / 1000.0).astype(np.float32)

        self._lr_elevation = self._block_mean(self.elevation_m[None].astype(np.float64))[0]

    # ------------------------------------------------------------------ large-scale state
    def _make_state(self) -> None:
        """AR(1) anomalies + seasonal cycle, drawn sequentially: day d depends only on draws for days <= d."""
        n = self.n_days
        rng = _rng(self._seed, 0, 0, _STREAM_STATE)
        # One fixed-width row of innovations per day, so a longer record extends a shorter one.
        e = rng.standard_normal((n, 11))
        phi = np.array([0.8, 0.65, 0.7, 0.7, 0.75, 0.6, 0.7, 0.7, 0.6])
        a = np.empty((n, phi.size))
        a[0] = e[0, : phi.size]
        scale = np.sqrt(1.0 - phi**2)
        for t in range(1, n):
            a[t] = phi * a[t - 1] + scale * e[t, : phi.size]
        a_t, a_rh, a_u, a_v, a_p, a_s, a_cy, a_cx, a_r = a.T

        doy = (self.dates - self.dates.astype("datetime64[Y]")).astype(np.int64) + 1
        season = np.cos(2 * np.pi * (doy - 20) / 365.25)  # +1 at the coldest time of the year (late January)
        autumn = np.cos(2 * np.pi * (doy - 310) / 365.25)  # storms strongest in late autumn

        # Bursts: rare, heavy-tailed (Pareto), decaying over the next days.
        start_burst = special.ndtr(e[:, 9]) < _BURST_PROBABILITY
        magnitude = _BURST_BASE * (1.0 - special.ndtr(e[:, 10]) + 1e-12) ** (-1.0 / _BURST_TAIL_INDEX)
        burst = np.ones(n)
        for t in range(n):
            carried = 1.0 + 0.3 * (burst[t - 1] - 1.0) if t else 1.0
            carried = carried if carried > 1.1 else 1.0  # a burst is over once it has decayed
            burst[t] = max(carried, magnitude[t] if start_burst[t] else 1.0)
        bursting = burst > 1.0

        ta = 280.0 - 8.0 * season + 3.0 * a_t
        s_lat = 0.45 * -a_p + 0.3 * a_u + np.sqrt(1 - 0.45**2 - 0.3**2) * a_s + 0.25 * autumn
        rh = np.clip(0.62 + 0.12 * a_rh + 0.08 * s_lat, 0.2, 0.98)
        rh = np.where(bursting, np.maximum(rh, 0.85), rh)  # bursting storms are saturated
        es = 611.2 * np.exp(17.67 * (ta - 273.15) / (ta - 29.65))  # saturation vapour pressure, Pa
        q = 0.622 * es / 85000.0 * rh
        u = 5.0 + 5.0 * a_u
        v = 4.0 * a_v
        p_anom = 900.0 * a_p - 800.0 * np.log(burst)
        storm_base = np.exp(0.5 * s_lat - 0.15)
        # A burst is heavy whatever the background: it multiplies at least an ordinary storm.
        storm = np.where(bursting, np.maximum(storm_base, 1.0), storm_base) * burst

        cy = 0.5 + 0.35 * a_cy
        cx = 0.55 + 0.35 * a_cx
        # Bursting storms are pulled over the domain (otherwise a burst may pass unseen offshore).
        pull = np.where(bursting, 0.5, 1.0)
        cy = 0.5 + pull * (cy - 0.5)
        cx = 0.55 + pull * (cx - 0.55)
        radius = 0.28 * np.exp(0.25 * a_r) * np.where(bursting, 1.3, 1.0)

        self.state_names = list(STATE_NAMES)
        self.state = np.stack([ta, rh, q, u, v, p_anom, storm, burst, cy, cx, radius], axis=1)
        # Standardized drivers for the extra channels.
        self._latent = np.stack([a_t, a_rh, a_u, a_v, a_p, s_lat, np.log(burst), a_cy, a_cx], axis=1)

    # ------------------------------------------------------------------ helpers
    def _check_range(self, start: int, stop: int) -> None:
        if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= self.n_days):
            raise InputError(f"day range [{start}, {stop}): must satisfy 0 <= start <= stop <= {self.n_days}")

    def _block_mean(self, fields: np.ndarray) -> np.ndarray:
        """(n, H, W) -> (n, h, w) area-weighted block means (fractional blocks)."""
        return np.matmul(np.matmul(self._agg_rows, fields), self._agg_cols_t)

    def _blob(self, days: slice, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, rows, cols) Gaussian storm blob (peak 1) at normalized coordinates y (rows, 1), x (1, cols)."""
        s = self.state[days]
        cy, cx, r = s[:, 8, None, None], s[:, 9, None, None], s[:, 10, None, None]
        # Separable: an outer product of two 1-D Gaussians costs far less than a 2-D exp.
        return np.exp(-((y[None] - cy) ** 2) / (2 * r**2)) * np.exp(-((x[None] - cx) ** 2) / (2 * r**2))

    def _batches(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        for b0 in range(start, stop, _BATCH_DAYS):
            yield b0, min(stop, b0 + _BATCH_DAYS)

    # ------------------------------------------------------------------ public generators
    def expected_intensity(self, start: int, stop: int) -> np.ndarray:
        """Expected precipitation ``mu = E[pr | state]`` of days ``start..stop-1``.

        Deterministic given the day's large-scale state and the terrain. Defined everywhere, sea included.

        Returns
        -------
        (n, H, W) float32 mm/day.
        """
        self._check_range(start, stop)
        out = np.empty((stop - start, *self._hr), dtype=np.float32)
        for b0, b1 in self._batches(start, stop):
            out[b0 - start : b1 - start] = self._expected_batch(b0, b1)
        return out

    def _expected_batch(self, start: int, stop: int) -> np.ndarray:
        days = slice(start, stop)
        s = self.state[days].astype(np.float32)
        q_rel, storm = s[:, 2] / np.float32(0.006), s[:, 6]
        u, v = s[:, 3, None, None], s[:, 4, None, None]
        upslope = (u * self._grad_x + v * self._grad_y) * np.float32(1.0 / self._upslope_scale)
        orographic = (1.0 + 0.8 * np.clip(upslope, 0.0, 2.5)) / (1.0 + 0.5 * np.clip(-upslope, 0.0, 2.5))
        pattern = 0.3 + self._blob(days, self._hr_y, self._hr_x).astype(np.float32)
        amplitude = (_PRECIP_SCALE_MM * q_rel * storm)[:, None, None]
        raw = amplitude * pattern * orographic * self._height_factor
        # Soft saturation of the largest expected values (finite moisture supply); ~identity below 10 mm/day.
        return (_MU_SATURATION_MM * np.log1p(raw / _MU_SATURATION_MM)).astype(np.float32)

    def small_scale_fields(self, start: int, stop: int, member: int = 0) -> np.ndarray:
        """The two unit Gaussian random fields behind the small-scale part (for tests and diagnostics).

        Returns
        -------
        (n, 2, H, W) float32: [0] thresholded into the wet/dry mask (power ~ k**-3.0),
        [1] the independent part of the log intensity (power ~ k**-2.6), both flattening at scales
        larger than ~48 pixels.
        """
        self._check_range(start, stop)
        self._check_member(member)
        out = np.empty((stop - start, 2, *self._hr), dtype=np.float32)
        for b0, b1 in self._batches(start, stop):
            out[b0 - start : b1 - start] = self._filter.fields(
                [[self._seed, d, member, _STREAM_SMALL_SCALE] for d in range(b0, b1)]
            )
        return out

    def _check_member(self, member: int) -> None:
        if not _is_int(member) or member < 0:
            raise InputError(f"member: must be an integer >= 0 (0 is the truth), got {member!r}")

    @staticmethod
    def _wet_parameters(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel mask threshold and intensity normalization that make ``E[pr | state] = mu``."""
        p_wet = np.clip(-np.expm1(-mu / _WET_SCALE_MM), *_P_WET_RANGE)
        threshold = -special.ndtri(p_wet)  # wet where the mask field exceeds it: P = p_wet
        # E[exp(s*(rho*g1 + c*g2)) 1{g1 > t}] = exp(s**2/2) * Phi(s*rho - t) for independent unit g1, g2.
        norm = 1.0 / special.ndtr(_SIGMA_LOG * _RHO_MASK - threshold)
        return threshold.astype(np.float32), norm.astype(np.float32)

    def _realize(self, mu: np.ndarray, threshold: np.ndarray, norm: np.ndarray, fields: np.ndarray) -> np.ndarray:
        g_mask, g_other = fields[:, 0], fields[:, 1]
        log_i = _SIGMA_LOG * (_RHO_MASK * g_mask + math.sqrt(1 - _RHO_MASK**2) * g_other) - _SIGMA_LOG**2 / 2
        pr = np.where(g_mask > threshold, mu * norm * np.exp(log_i), np.float32(0.0)).astype(np.float32)
        pr[:, ~self.land_mask] = np.nan
        return pr

    def target(self, start: int, stop: int, member: int = 0) -> np.ndarray:
        """Realized high-resolution precipitation of days ``start..stop-1``.

        Parameters
        ----------
        start, stop : day range (global day indices)
        member : 0 is the truth; 1, 2, ... are independent redraws of the small-scale part for the same
            large-scale state (the oracle ensemble uses 1..K)

        Returns
        -------
        (n, H, W) float32 mm/day, NaN over sea, finite and >= 0 over land.
        """
        self._check_range(start, stop)
        self._check_member(member)
        out = np.empty((stop - start, *self._hr), dtype=np.float32)
        for b0, b1 in self._batches(start, stop):
            mu = self.expected_intensity(b0, b1)
            threshold, norm = self._wet_parameters(mu)
            fields = self._filter.fields([[self._seed, d, member, _STREAM_SMALL_SCALE] for d in range(b0, b1)])
            out[b0 - start : b1 - start] = self._realize(mu, threshold, norm, fields)
        return out

    def oracle(self, start: int, stop: int) -> np.ndarray:
        """The oracle ensemble: members 1..K, redraws of the small-scale part for each day's state.

        Returns
        -------
        (n, K, H, W) float32 mm/day, NaN over sea.
        """
        self._check_range(start, stop)
        K = int(self.options.oracle_members)
        out = np.empty((stop - start, K, *self._hr), dtype=np.float32)
        for d in range(start, stop):
            mu = self.expected_intensity(d, d + 1)
            threshold, norm = self._wet_parameters(mu)
            for m0 in range(0, K, _BATCH_DAYS):
                members = range(m0 + 1, min(K, m0 + _BATCH_DAYS) + 1)
                fields = self._filter.fields([[self._seed, d, m, _STREAM_SMALL_SCALE] for m in members])
                out[d - start, m0 : m0 + len(members)] = self._realize(mu, threshold, norm, fields)
        return out

    def predictors(self, start: int, stop: int) -> np.ndarray:
        """Coarse predictors of days ``start..stop-1`` from the large-scale state, terrain and own noise.

        Returns
        -------
        (n, C, h, w) float32 in physical units (:attr:`units`): ``pr_coarse`` mm/day (block mean of
        ``mu`` with multiplicative noise), ``hus850`` kg kg-1, ``ua850``/``va850`` m s-1 (mean wind plus
        a cyclonic circulation around the storm), ``psl`` Pa, ``ta850`` K, ``extra_i`` dimensionless.
        """
        self._check_range(start, stop)
        n, (h, w), C = stop - start, self._lr, len(self.variables)
        out = np.empty((n, C, h, w), dtype=np.float32)
        for b0, b1 in self._batches(start, stop):
            out[b0 - start : b1 - start] = self._predictor_batch(b0, b1)
        return out

    def _predictor_batch(self, start: int, stop: int) -> np.ndarray:
        (h, w), C = self._lr, len(self.variables)
        days = slice(start, stop)
        s = self.state[days]
        # Always at least the base channels' noise, so fewer channels are a prefix of more channels.
        noise = np.stack(
            [
                _rng(self._seed, d, 0, _STREAM_PREDICTOR_NOISE).standard_normal((max(C, len(BASE_CHANNELS)), h, w))
                for d in range(start, stop)
            ]
        )
        blob = self._blob(days, self._lr_y, self._lr_x)
        col = s[:, :, None, None]
        ta, q, u, v, p_anom, storm = col[:, 0], col[:, 2], col[:, 3], col[:, 4], col[:, 5], col[:, 6]
        cy, cx, r = col[:, 8], col[:, 9], col[:, 10]
        swirl = 3.0 * np.log1p(storm)  # m/s: cyclonic flow around the storm centre
        channels = [
            self._block_mean(self.expected_intensity(start, stop).astype(np.float64))
            * np.exp(0.15 * noise[:, 0] - 0.15**2 / 2),
            q * (0.85 + 0.3 * blob) * (1.0 + 0.03 * noise[:, 1]),
            u - swirl * (self._lr_y[None] - cy) / r * blob + 0.8 * noise[:, 2],
            v + swirl * (self._lr_x[None] - cx) / r * blob + 0.8 * noise[:, 3],
            101325.0 + p_anom - 600.0 * np.log1p(storm) * blob + 60.0 * noise[:, 4],
            ta - 0.0065 * 0.4 * self._lr_elevation[None] + 2.0 * (0.5 - self._lr_y[None]) + 0.4 * noise[:, 5],
        ]
        for i in range(max(0, C - len(channels))):
            wts = self._extra_weights[i]
            mix = (self._latent[days] @ wts[:-1])[:, None, None]
            channels.append(mix + wts[-1] * blob + 0.3 * noise[:, len(BASE_CHANNELS) + i])
        return np.stack(channels[:C], axis=1).astype(np.float32)


def heavy_days(land_means: np.ndarray) -> np.ndarray:
    """Heavy-day flags: land-mean precipitation above ``HEAVY_FACTOR`` x the P90 of the daily land means.

    Parameters
    ----------
    land_means : (n,) daily land-mean precipitation, mm/day

    Returns
    -------
    (n,) bool.
    """
    land_means = np.asarray(land_means, dtype=np.float64)
    return land_means > HEAVY_FACTOR * np.quantile(land_means, 0.9)


# ---------------------------------------------------------------------- writers
_DESCRIPTION = (
    "Synthetic daily precipitation with a known truth. A low-dimensional large-scale weather state "
    "(AR(1) anomalies with a seasonal cycle: temperature, moisture, wind, pressure, storminess with rare "
    "heavy-tailed bursts, storm position) fixes the expected high-resolution precipitation mu (a storm "
    "blob scaled by moisture and storminess, enhanced on high ground and windward slopes). The realized "
    "field is mu times a random small-scale part: a wet/dry mask and a lognormal intensity from Gaussian "
    "random fields with power-law spectra. The coarse predictors come from the large-scale state, the "
    "terrain and their own noise only, so they carry no information about the small-scale draw; the "
    "oracle ensemble redraws that part for each test day and is the best any model can do. Sea pixels "
    "are missing (NaN) in the target."
)


def _metadata(bench: SyntheticBenchmark, fmt: str) -> dict:
    return {
        "format": fmt,
        "options": asdict(bench.options),
        "n_days": bench.n_days,
        "n_train": bench.n_train,
        "n_test": bench.n_test,
        "train_dates": [str(bench.dates[0]), str(bench.dates[bench.n_train - 1])],
        "test_dates": [str(bench.dates[bench.n_train]), str(bench.dates[-1])],
        "variables": list(bench.variables),
        "units": list(bench.units),
        "target": {"name": "pr", "units": "mm/day", "missing": "NaN over sea"},
        "land_fraction": float(bench.land_mask.mean()),
        "hr_spacing_deg": HR_SPACING_DEG,
        "heavy_day_criterion": (
            f"land-mean precipitation > {HEAVY_FACTOR:g} x the 90th percentile of daily land means"
        ),
        "oracle": {"path": ORACLE_FILE.as_posix(), "members": int(bench.options.oracle_members)},
        "description": _DESCRIPTION,
    }


def _chunks(start: int, stop: int, chunk_days: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    if not _is_int(chunk_days) or chunk_days < 1:
        raise InputError(f"chunk_days: must be an integer >= 1, got {chunk_days!r}")
    starts = range(start, stop, chunk_days)
    for b0 in tqdm(starts, desc=desc, unit="chunk", disable=not progress, leave=False):
        yield b0, min(stop, b0 + chunk_days)


def _create_npy(path: Path, shape: tuple[int, ...]) -> None:
    """Create a float32 .npy file of ``shape`` (contents filled in later by :func:`_write_rows`)."""
    create_npy(path, shape)  # the map is closed when dropped


def _write_rows(path: Path, first: int, rows: np.ndarray) -> None:
    """Write ``rows`` into the .npy file at ``path`` from row ``first`` on, through a short-lived memmap.

    Unmapping after every chunk keeps the written pages out of the process's resident memory.
    """
    arr = np.lib.format.open_memmap(path, mode="r+")
    arr[first : first + rows.shape[0]] = rows
    arr.flush()
    del arr


def write_oracle(bench: SyntheticBenchmark, out_dir: Path, chunk_days: int = 32, progress: bool = True) -> None:
    """Write ``oracle/oracle_test.npy`` (n_test, K, H, W) float32 mm/day (NaN at sea) and its README.

    Test day j is global day ``n_train + j``. Written in chunks of days through a memory map.
    """
    path = Path(out_dir) / ORACLE_FILE
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    K = int(bench.options.oracle_members)
    H, W = bench.land_mask.shape
    _create_npy(path, (bench.n_test, K, H, W))
    for b0, b1 in _chunks(bench.n_train, bench.n_days, chunk_days, progress, "oracle"):
        _write_rows(path, b0 - bench.n_train, bench.oracle(b0, b1))
    write_text(
        folder / "README.md",
        "# Oracle ensemble\n\n"
        f"`oracle_test.npy`: (n_test={bench.n_test}, K={K}, H={H}, W={W}) float32, mm/day, NaN over sea.\n"
        f"Test day j is day {bench.n_train} + j of the record, in the order of the test arrays.\n\n"
        "For every test day the K members are independent redraws of the small-scale random part of\n"
        "the precipitation (wet/dry mask and intensity) for the same large-scale state, hence for the\n"
        "same coarse predictors X_lr; the observed field (the truth) is one more such draw. No model\n"
        "that sees only X_lr can do better than this ensemble: its CRPS is the floor to compare with.\n",
    )


def write_srdrn(bench: SyntheticBenchmark, out_dir: Path, chunk_days: int = 128, progress: bool = True) -> None:
    """Write the benchmark in SRDRN's preprocessed layout into the existing directory ``out_dir``.

    Two passes over the days, memory bounded by ``chunk_days``: training statistics first (per-channel
    pooled mean/std of the predictors, per-pixel mean/std of log1p(pr)), then the normalized arrays
    (predictors (T, h, w, C), targets (T, H, W) with z = 0 at sea), plus statics, grids, dates,
    ``synthetic_benchmark.json`` and the oracle ensemble (:func:`write_oracle`).
    """
    out_dir = Path(out_dir)
    H, W = bench.land_mask.shape
    h, w = bench.lr_lat.size, bench.lr_lon.size
    C = len(bench.variables)

    x_sum, x_sq, x_n = np.zeros(C), np.zeros(C), 0
    count, total, total_sq = np.zeros((H, W)), np.zeros((H, W)), np.zeros((H, W))
    for b0, b1 in _chunks(0, bench.n_train, chunk_days, progress, "statistics"):
        x = bench.predictors(b0, b1).astype(np.float64)
        x_sum += x.sum(axis=(0, 2, 3))
        x_sq += (x**2).sum(axis=(0, 2, 3))
        x_n += x.shape[0] * h * w
        logp = np.log1p(np.maximum(bench.target(b0, b1).astype(np.float64), 0.0))
        valid = np.isfinite(logp)
        logp = np.where(valid, logp, 0.0)
        count += valid.sum(axis=0)
        total += logp.sum(axis=0)
        total_sq += (logp**2).sum(axis=0)
    x_mean = x_sum / x_n
    x_std = np.maximum(np.sqrt(np.maximum(x_sq / x_n - x_mean**2, 0.0)), PREDICTOR_STD_FLOOR)
    y_mean, y_std = finalize_target_stats(count, total, total_sq)

    for name, lo, hi in (("train", 0, bench.n_train), ("test", bench.n_train, bench.n_days)):
        x_path, y_path = (out_dir / f for f in srdrn.period_files(name))
        _create_npy(x_path, (hi - lo, h, w, C))
        _create_npy(y_path, (hi - lo, H, W))
        for b0, b1 in _chunks(lo, hi, chunk_days, progress, f"{name} arrays"):
            x = (bench.predictors(b0, b1).astype(np.float64) - x_mean[:, None, None]) / x_std[:, None, None]
            _write_rows(x_path, b0 - lo, np.moveaxis(x, 1, -1).astype(np.float32))
            z = target_to_normalized(bench.target(b0, b1), y_mean, y_std)
            _write_rows(y_path, b0 - lo, np.nan_to_num(z, nan=0.0))  # sea: z = 0 (mean 0, std 1 there)

    save_npy(out_dir / srdrn.TARGET_MEAN, y_mean.astype(np.float32))
    save_npy(out_dir / srdrn.TARGET_STD, y_std.astype(np.float32))
    save_npy(out_dir / srdrn.LAND_MASK, bench.land_mask.astype(np.uint8))
    save_npy(out_dir / srdrn.ELEVATION, bench.elevation_m.astype(np.float32))
    save_npy(out_dir / srdrn.HR_LAT, bench.hr_lat)
    save_npy(out_dir / srdrn.HR_LON, bench.hr_lon)
    save_npy(out_dir / srdrn.LR_LAT, bench.lr_lat)
    save_npy(out_dir / srdrn.LR_LON, bench.lr_lon)
    save_npy(out_dir / srdrn.VARIABLES, np.array(bench.variables, dtype=str))
    save_npy(out_dir / srdrn.DATES_TRAIN, bench.dates[: bench.n_train])
    save_npy(out_dir / srdrn.DATES_TEST, bench.dates[bench.n_train :])
    write_json(out_dir / "synthetic_benchmark.json", _metadata(bench, "srdrn"))
    write_oracle(bench, out_dir, progress=progress)


def _nc_grid(ds: netCDF4.Dataset, bench: SyntheticBenchmark, lat: np.ndarray, lon: np.ndarray, with_time: bool) -> None:
    """Global CF attributes, lat/lon coordinate variables and (optionally) the unlimited time axis."""
    ds.Conventions = "CF-1.8"
    ds.title = "precip_cvae synthetic downscaling benchmark"
    ds.source = "precip_cvae.data.synthetic"
    ds.synthetic_options = str(asdict(bench.options))
    ds.createDimension("lat", lat.size)
    ds.createDimension("lon", lon.size)
    for name, values, units, standard, axis in (
        ("lat", lat, "degrees_north", "latitude", "Y"),
        ("lon", lon, "degrees_east", "longitude", "X"),
    ):
        var = ds.createVariable(name, "f8", (name,))
        var.units, var.standard_name, var.long_name, var.axis = units, standard, standard, axis
        var[:] = values
    if with_time:
        ds.createDimension("time", None)
        time = ds.createVariable("time", "f8", ("time",))
        time.units = f"days since {bench.dates[0]}"
        time.calendar = "proleptic_gregorian"
        time.standard_name, time.long_name, time.axis = "time", "time", "T"
        time[:] = np.arange(bench.n_days, dtype=np.float64)


def write_netcdf(bench: SyntheticBenchmark, out_dir: Path, chunk_days: int = 128, progress: bool = True) -> None:
    """Write the benchmark unnormalized as CF-1.8 NetCDF into the existing directory ``out_dir``.

    ``lowres.nc`` (one float32 variable per predictor channel, (time, lat, lon)), ``highres.nc`` (``pr``,
    mm/day, NaN over sea), ``statics.nc`` (``land_mask`` int8, ``elevation`` m), ``synthetic_benchmark.json``
    and the oracle ensemble (:func:`write_oracle`). Days are written in chunks (bounded memory).
    """
    import netCDF4  # lazily: only this writer needs it

    out_dir = Path(out_dir)
    H, W = bench.land_mask.shape
    h, w = bench.lr_lat.size, bench.lr_lon.size
    nan = np.float32(np.nan)
    long_names = {
        "pr_coarse": "coarse precipitation (block mean of the expected precipitation, with noise)",
        "hus850": "specific humidity at 850 hPa",
        "ua850": "eastward wind at 850 hPa",
        "va850": "northward wind at 850 hPa",
        "psl": "sea level pressure",
        "ta850": "air temperature at 850 hPa",
    }
    standard_names = {
        "hus850": "specific_humidity",
        "ua850": "eastward_wind",
        "va850": "northward_wind",
        "psl": "air_pressure_at_mean_sea_level",
        "ta850": "air_temperature",
    }
    with (
        netCDF4.Dataset(out_dir / "lowres.nc", "w", format="NETCDF4") as lo_ds,
        netCDF4.Dataset(out_dir / "highres.nc", "w", format="NETCDF4") as hi_ds,
    ):
        _nc_grid(lo_ds, bench, bench.lr_lat, bench.lr_lon, with_time=True)
        _nc_grid(hi_ds, bench, bench.hr_lat, bench.hr_lon, with_time=True)
        lo_vars = []
        for name, unit in zip(bench.variables, bench.units, strict=True):
            var = lo_ds.createVariable(
                name,
                "f4",
                ("time", "lat", "lon"),
                zlib=True,
                complevel=1,
                chunksizes=(min(bench.n_days, 64), h, w),
            )
            var.units = unit
            var.long_name = long_names.get(name, "noisy linear mixture of the large-scale state")
            if name in standard_names:
                var.standard_name = standard_names[name]
            if name in ("hus850", "ua850", "va850", "ta850"):
                var.level_hPa = 850.0
            lo_vars.append(var)
        pr = hi_ds.createVariable(
            "pr", "f4", ("time", "lat", "lon"), zlib=True, complevel=1, chunksizes=(1, H, W), fill_value=nan
        )
        pr.units = "mm/day"
        pr.standard_name = "lwe_precipitation_rate"
        pr.long_name = "daily precipitation (liquid water equivalent), missing over sea"
        pr.cell_methods = "time: mean"
        for b0, b1 in _chunks(0, bench.n_days, chunk_days, progress, "netcdf"):
            x = bench.predictors(b0, b1)
            for c, var in enumerate(lo_vars):
                var[b0:b1] = x[:, c]
            pr[b0:b1] = bench.target(b0, b1)

    with netCDF4.Dataset(out_dir / "statics.nc", "w", format="NETCDF4") as st:
        _nc_grid(st, bench, bench.hr_lat, bench.hr_lon, with_time=False)
        lm = st.createVariable("land_mask", "i1", ("lat", "lon"))
        lm.long_name = "land-sea mask (1 land, 0 sea)"
        lm.flag_values = np.array([0, 1], dtype=np.int8)
        lm.flag_meanings = "sea land"
        lm[:] = bench.land_mask.astype(np.int8)
        el = st.createVariable("elevation", "f4", ("lat", "lon"), zlib=True, complevel=1)
        el.units = "m"
        el.standard_name = "surface_altitude"
        el.long_name = "surface elevation above sea level"
        el[:] = bench.elevation_m
    write_json(out_dir / "synthetic_benchmark.json", _metadata(bench, "netcdf"))
    write_oracle(bench, out_dir, progress=progress)


def run_synth(
    options: SynthOptions, out: str | Path, fmt: str = "srdrn", overwrite: bool = False, progress: bool = True
) -> str:
    """Build the benchmark and write it to ``out`` atomically (staged, renamed on success).

    Parameters
    ----------
    options : the benchmark options
    out : directory to create (must not exist unless ``overwrite``)
    fmt : "srdrn" (:func:`write_srdrn`) or "netcdf" (:func:`write_netcdf`)

    Returns
    -------
    A short summary of what was written, for the command line.
    """
    writers = {"srdrn": write_srdrn, "netcdf": write_netcdf}
    if fmt not in writers:
        raise InputError(f"format: must be one of {sorted(writers)}, got {fmt!r}")
    bench = SyntheticBenchmark(options)
    with staged_directory(out, overwrite=overwrite) as tmp:
        writers[fmt](bench, tmp, progress=progress)
    (H, W), (h, w) = bench.land_mask.shape, (bench.lr_lat.size, bench.lr_lon.size)
    return (
        f"synthetic benchmark ({fmt}) -> {out}: {bench.n_days} days "
        f"({bench.n_train} train, {bench.n_test} test), "
        f"X {len(bench.variables)}x{h}x{w} -> Y {H}x{W}, land {bench.land_mask.mean():.0%}, "
        f"oracle {options.oracle_members} members per test day"
    )
