import numpy as np
import pytest

from precip_cvae.data.quantiles import StreamingPercentiles


@pytest.mark.parametrize("n_chunks", [1, 3, 17])
def test_equals_numpy_percentile_exactly(n_chunks):
    rng = np.random.default_rng(n_chunks)
    x = np.where(rng.random(50_001) < 0.45, 0.0, rng.gamma(0.5, 7.0, 50_001)).astype(np.float32)
    x[:3] = [5000.0, 2e5, 0.5]  # beyond the histogram's upper edge, too
    ps = [0, 1, 50, 90, 95, 99, 99.9, 100]
    s = StreamingPercentiles(ps)
    for c in np.array_split(x, n_chunks):
        s.count(c)
    s.plan()
    for c in np.array_split(x, n_chunks):
        s.collect(c)
    got = s.result()
    for p in ps:
        assert got[p] == pytest.approx(float(np.percentile(x, p)), rel=1e-12, abs=0)


def test_hand_computed():
    s = StreamingPercentiles([95, 50])
    values = np.arange(100, dtype=float)  # 0..99: P95 at position 94.05 -> 94.05, P50 -> 49.5
    s.count(values)
    s.plan()
    s.collect(values)
    assert s.result()[95] == pytest.approx(94.05)
    assert s.result()[50] == pytest.approx(49.5)


def test_memory_stays_small_when_dry_pixels_carry_round_off():
    """Dry pixels read back from float32 come as ~1e-7 mm/day, not 0: they must not all be kept."""
    rng = np.random.default_rng(5)
    x = np.where(rng.random(200_000) < 0.6, rng.uniform(1e-8, 1e-6, 200_000), rng.gamma(0.5, 7.0, 200_000))
    s = StreamingPercentiles([50, 95])
    s.count(x)
    s.plan()
    s.collect(x)
    assert sum(a.size for store in s._kept.values() for a in store) < 2_000
    assert s.result()[95] == pytest.approx(float(np.percentile(x, 95)), rel=1e-12)
