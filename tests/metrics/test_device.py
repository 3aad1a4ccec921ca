"""Scores on the model's device (torch, float64) against the NumPy accumulators day by day: the same sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precip_cvae.metrics import CRPS, Deterministic, DeviceFields, Fields, Intensities, Scores, TwCRPS
from precip_cvae.metrics._core import Accumulator
from precip_cvae.metrics.scores import EnsembleScores
from precip_cvae.metrics.spatial import FSS


def _scores() -> Scores:
    return Scores({"crps": CRPS(), "twcrps": TwCRPS({"P90": 6.0, "P99": 30.0}), "det": Deterministic(tail=6.0),
                   "int": Intensities(quantiles=(0.9, 0.99), wet=0.1)})  # fmt: skip


def _fields(K: int):
    """Gamma-distributed fields with dry pixels, a land mask, missing observations and a non-finite member, one field
    without any valid pixel (NumPy arrays)."""
    rng = np.random.default_rng(K)
    N, H, W = 5, 12, 9
    ens = rng.gamma(0.4, 8.0, (N, K, H, W)) * (rng.random((N, K, H, W)) < 0.6)
    obs = rng.gamma(0.4, 8.0, (N, H, W)) * (rng.random((N, H, W)) < 0.6)
    obs[1, 2:4, 3] = np.nan
    ens[2, K - 1, 5, 5] = np.inf
    obs[4] = np.nan  # a day without a valid pixel
    mask = rng.random((H, W)) < 0.8
    return ens.astype(np.float32), obs.astype(np.float32), mask


def assert_same_scores(numpy_scores: Scores, device_scores: Scores, days: int) -> None:
    """Every value of compute() to 1e-12 (NaN where NumPy has NaN), and the histograms' counts, min and max exactly."""
    a, b = numpy_scores.compute(), device_scores.compute()
    assert a.keys() == b.keys() and a["pixels"] == b["pixels"] > 0 and a["days"] == b["days"] == days
    for key, value in a.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(b[key]), key
        else:
            assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    hist_a, hist_b = numpy_scores["int"].sim, device_scores["int"].sim
    np.testing.assert_array_equal(hist_a.counts, hist_b.counts)
    assert (hist_a.min, hist_a.max) == (hist_b.min, hist_b.max)
    np.testing.assert_array_equal(numpy_scores["int"].obs.counts, device_scores["int"].obs.counts)


def day_by_day_and_batched(K: int, device: str) -> tuple[Scores, Scores]:
    """The scores of :func:`_fields` day by day in NumPy, and as one batch of tensors on ``device`` through
    :meth:`Scores.add_device` (on a CPU too: that path must hold wherever it runs)."""
    ens, obs, mask = _fields(K)
    numpy_scores, device_scores = _scores(), _scores()
    if K == 1:  # the fair CRPS needs two members
        numpy_scores = Scores({k: v for k, v in numpy_scores.items() if "crps" not in k})
        device_scores = Scores({k: v for k, v in device_scores.items() if "crps" not in k})
    for i in range(obs.shape[0]):
        numpy_scores.add(Fields(ens[i], obs[i], mask))
    tensors = (torch.from_numpy(x).to(device) for x in (ens, obs, mask))
    device_scores.add_device(DeviceFields(*tensors))
    return numpy_scores, device_scores


@pytest.mark.parametrize("K", [1, 2, 3, 16])
def test_device_scores_equal_the_numpy_accumulators_day_by_day(K):
    assert_same_scores(*day_by_day_and_batched(K, "cpu"), days=5)


def test_add_tensors_on_a_cpu_scores_day_by_day_in_numpy():
    ens, obs, mask = _fields(2)
    numpy_scores, tensor_scores = _scores(), _scores()
    for i in range(obs.shape[0]):
        numpy_scores.add(Fields(ens[i], obs[i], mask))
    tensor_scores.add_tensors(torch.from_numpy(ens), torch.from_numpy(obs), torch.from_numpy(mask))
    assert numpy_scores.compute() == pytest.approx(tensor_scores.compute(), rel=0, abs=0, nan_ok=True)


def ensemble_scores_compared(K: int, device: str) -> None:
    """EnsembleScores (all eleven accumulators evaluate keeps: pooled CRPS on a grid that is not a multiple of the
    block, FSS, spectra, rank histogram, Rx1day, ...) fed :func:`_fields` as one batch on ``device``, and one day at a
    time there, against the same days one by one in NumPy: every value to 1e-12, the rank histogram exactly."""
    ens, obs, mask = _fields(K)
    thresholds = {"P95": 6.0, "P99": 30.0}
    numpy_scores, batch, one_by_one = (EnsembleScores(K, thresholds, pools=(4, 5), rng_seed=3) for _ in range(3))
    for i in range(obs.shape[0]):
        numpy_scores.add(Fields(ens[i], obs[i], mask))
        day = (torch.from_numpy(x[i : i + 1]).to(device) for x in (ens, obs))
        one_by_one.add_device(DeviceFields(*day, torch.from_numpy(mask).to(device)))
    batch.add_device(DeviceFields(*(torch.from_numpy(x).to(device) for x in (ens, obs, mask))))
    a = numpy_scores.compute()
    assert len(a) > 40 and a["days"] == 5 and sum(a["rank_histogram"]) == a["pixels"]
    for b in (batch.compute(), one_by_one.compute()):
        assert a.keys() == b.keys() and b["rank_histogram"] == a["rank_histogram"]  # ties broken by the same draws
        for key, value in a.items():
            np.testing.assert_allclose(np.asarray(b[key], dtype=float), np.asarray(value, dtype=float), rtol=1e-12,
                                       atol=1e-12, err_msg=key)  # fmt: skip


@pytest.mark.parametrize("K", [2, 3, 16])
def test_every_score_of_evaluate_on_the_device_equals_numpy_day_by_day(K):
    ensemble_scores_compared(K, "cpu")


def test_device_scores_refuse_an_accumulator_without_a_device_path_and_a_bad_shape():
    class Plain(Accumulator):
        def accum(self, f):
            pass

    with pytest.raises(TypeError, match="no device path for Plain"):
        Scores({"plain": Plain()}).add_device(DeviceFields(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4)))
    with pytest.raises(ValueError, match="odd windows"):
        Scores({"fss": FSS({"P90": 6.0}, windows=(2,))}).add_device(
            DeviceFields(torch.ones(1, 2, 4, 4), torch.ones(1, 4, 4))
        )
    with pytest.raises(ValueError, match=r"expected \(N, K, H, W\) and \(N, H, W\)"):
        DeviceFields(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
