"""RAPSD of known fields and spectral ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precip_cvae import metrics as m


def _slope(freqs, power):
    return np.polyfit(np.log10(freqs), np.log10(power), 1)[0]


def test_rapsd_of_a_cosine_by_hand():
    x = np.arange(8)
    field = np.tile(np.cos(2 * np.pi * 2 * x / 8), (8, 1))  # 2 cycles per 8 px along x
    freqs, power = m.rapsd(field)
    np.testing.assert_allclose(freqs, [1 / 8, 2 / 8, 3 / 8, 4 / 8])
    # |F|^2/(HW) = 32^2/64 = 16 at (0, +-2); bin 2 holds 12 coefficients: (0,+-2), (+-2,0), (+-1,+-2), (+-2,+-1)
    np.testing.assert_allclose(power, [0.0, 32 / 12, 0.0, 0.0], atol=1e-12)
    # a missing pixel is filled with the field's mean (0 here): nothing changes but that pixel
    with_gap = field.copy()
    with_gap[3, 3] = np.nan
    filled = field.copy()
    filled[3, 3] = field[np.isfinite(with_gap)].mean()
    np.testing.assert_allclose(m.rapsd(with_gap)[1], m.rapsd(filled)[1], rtol=1e-12, atol=1e-12)


def test_rapsd_of_white_noise_is_flat():
    rng = np.random.default_rng(21)
    freqs, power = m.rapsd(rng.normal(0.0, 2.0, (8, 128, 128)))
    power = power.mean(axis=0)  # mean over fields before the log, to avoid the log's bias at few coefficients
    assert _slope(freqs, power) == pytest.approx(0.0, abs=0.15)
    assert power.mean() == pytest.approx(4.0, rel=0.05)  # white noise of variance 4 has power 4


def test_rapsd_recovers_a_power_law():
    rng = np.random.default_rng(22)
    n = 128
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    amplitude = np.where(f > 0, f, 1.0) ** -1.5  # power ~ f^-3
    amplitude[0, 0] = 0.0
    fields = np.fft.ifft2(np.fft.fft2(rng.normal(size=(8, n, n))) * amplitude).real
    freqs, power = m.rapsd(fields)
    assert _slope(freqs, power.mean(axis=0)) == pytest.approx(-3.0, abs=0.3)


def test_spectrum_log_ratio_by_hand():
    freqs = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
    obs = np.ones(5)
    sim = np.array([10.0, 1.0, 100.0, 0.1, 0.1])
    bands = [(0.0, 1 / 16), (1 / 16, 1 / 4), (1 / 4, np.inf), (0.6, 0.7)]
    out = m.spectrum_log_ratio(sim, obs, freqs, bands)
    assert out[:3] == pytest.approx([1.0, 1.0, -1.0])  # (0 + 2)/2 in the medium band
    assert math.isnan(out[3])
