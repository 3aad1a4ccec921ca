"""Geometry on the high-resolution grid: distance to the coast in km, lat/lon aware."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

EARTH_RADIUS_KM = 6371.0


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat.ravel()), np.deg2rad(lon.ravel())
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def distance_to_coast_km(
    land: np.ndarray, lat: np.ndarray | None = None, lon: np.ndarray | None = None, spacing_km: float = 4.0
) -> tuple[np.ndarray, str]:
    """Great-circle distance from each land cell to the nearest sea cell centre (0 at sea).

    Parameters
    ----------
    land : (H, W) bool, True over land
    lat, lon : (H, W) degrees, or None for a grid of square cells ``spacing_km`` wide
    spacing_km : cell size used only without coordinates

    Returns
    -------
    distance : (H, W) float32 km
    how : one sentence saying how it was computed (for the metadata)

    A domain without any sea cell gets the distance to the nearest cell just outside the domain
    (its coordinates extrapolated one cell outwards): a distance to the domain edge, said so in ``how``.
    """
    land = np.asarray(land, dtype=bool)
    no_sea = bool(land.all())
    if lat is None or lon is None:
        sea = np.pad(~land, 1, constant_values=True) if no_sea else ~land
        dist = ndimage.distance_transform_edt(~sea, sampling=(spacing_km, spacing_km))
        dist = dist[1:-1, 1:-1] if no_sea else dist
        how = f"Euclidean, square cells of {spacing_km:g} km (no coordinates known)"
    else:
        if no_sea:
            # Linear extrapolation of the coordinates one cell beyond each edge.
            ring_lat = np.pad(lat, 1, mode="reflect", reflect_type="odd")
            ring_lon = np.pad(lon, 1, mode="reflect", reflect_type="odd")
            ring = np.ones(ring_lat.shape, bool)
            ring[1:-1, 1:-1] = False
            sea_points = _unit_vectors(ring_lat[ring], ring_lon[ring])
        else:
            sea_points = _unit_vectors(lat[~land], lon[~land])
        chord, _ = cKDTree(sea_points).query(_unit_vectors(lat, lon))
        dist = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
        dist = dist.reshape(land.shape)
        how = "great-circle distance between cell centres on a sphere of radius 6371 km"
    dist = np.where(land, dist, 0.0).astype(np.float32)
    if no_sea:
        how += "; the domain has no sea cell, so this is the distance to the nearest cell outside the domain"
    return dist, how
