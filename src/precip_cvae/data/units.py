"""Precipitation units as real files spell them, converted to mm/day."""

from __future__ import annotations

# Keys are spellings after _canonical(): lower case, no spaces/carets/asterisks/dots, "/" kept.
_FACTORS_TO_MM_PER_DAY = {
    # fluxes in kg m-2 s-1 (= mm/s)
    "kgm-2s-1": 86400.0,
    "kg/m2/s": 86400.0,
    "kg/m2s": 86400.0,
    "kgm-2/s": 86400.0,
    "mm/s": 86400.0,
    "mms-1": 86400.0,
    "mm/sec": 86400.0,
    # daily totals or rates per day
    "mm": 1.0,
    "mm/day": 1.0,
    "mm/d": 1.0,
    "mmd-1": 1.0,
    "mmday-1": 1.0,
    "mm/24h": 1.0,
    "kgm-2": 1.0,
    "kg/m2": 1.0,
    "kgm-2d-1": 1.0,
    "kgm-2day-1": 1.0,
    "kg/m2/day": 1.0,
    "kg/m2/d": 1.0,
    "mmperday": 1.0,
    # hourly rates
    "mm/h": 24.0,
    "mm/hr": 24.0,
    "mmh-1": 24.0,
    "mmhr-1": 24.0,
    "kgm-2h-1": 24.0,
    # metres (ERA5 daily total "tp") and metre rates
    "m": 1000.0,
    "m/day": 1000.0,
    "m/d": 1000.0,
    "md-1": 1000.0,
    "mday-1": 1000.0,
    "m/s": 86400000.0,
    "ms-1": 86400000.0,
    "cm": 10.0,
    "cm/day": 10.0,
}


def _canonical(units: str) -> str:
    text = units.strip().lower()
    text = text.replace("**", "").replace("^", "").replace("*", "").replace(".", "").replace(" ", "")
    return text


def precipitation_factor(units: str | None, where: str) -> float:
    """Multiplicative factor that turns precipitation in ``units`` into mm/day.

    Parameters
    ----------
    units : the CF ``units`` attribute as written in the file (e.g. ``"kg m-2 s-1"``, ``"Kg/m^2/s"``,
        ``"mm"``, ``"m"``), or None when the file has none
    where : ``file:variable``, named in the error message

    Raises
    ------
    InputError when the units are missing or unknown.
    """
    from precip_cvae.errors import InputError

    if units is None or not str(units).strip():
        raise InputError(f"{where}: precipitation has no 'units' attribute; pass --pr-units (e.g. 'mm/day')")
    key = _canonical(str(units))
    if key in _FACTORS_TO_MM_PER_DAY:
        return _FACTORS_TO_MM_PER_DAY[key]
    raise InputError(
        f"{where}: unknown precipitation units {units!r}; expected e.g. 'kg m-2 s-1', 'mm/day', 'mm', 'm' "
        "(pass --pr-units to override)"
    )
