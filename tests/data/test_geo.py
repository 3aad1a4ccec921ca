import numpy as np
import pytest

from precip_cvae.data.geo import EARTH_RADIUS_KM, distance_to_coast_km


def test_hand_computed_on_the_equator():
    land = np.array([[False, True, True]])
    lat = np.zeros((1, 3))
    lon = np.array([[0.0, 1.0, 2.0]])
    dist, _ = distance_to_coast_km(land, lat, lon)
    degree = np.pi * EARTH_RADIUS_KM / 180.0  # 111.19 km
    np.testing.assert_allclose(dist[0], [0.0, degree, 2 * degree], rtol=1e-7)  # float32 output


def test_longitude_spacing_shrinks_with_latitude():
    land = np.array([[False, True]])
    dist, _ = distance_to_coast_km(land, np.full((1, 2), 60.0), np.array([[0.0, 1.0]]))
    assert dist[0, 1] == pytest.approx(111.19 * 0.5, rel=2e-3)  # cos(60°) = 0.5


def test_without_coordinates_and_without_sea():
    land = np.ones((3, 5), bool)
    dist, how = distance_to_coast_km(land, spacing_km=4.0)
    assert dist[1, 2] == pytest.approx(8.0)  # two cells from the nearest outside cell
    assert "no sea" in how
