import pytest

from precip_cvae.data.units import precipitation_factor
from precip_cvae.errors import InputError


@pytest.mark.parametrize(
    "units, factor",
    [
        ("kg m-2 s-1", 86400.0),
        ("Kg/m^2/s", 86400.0),
        ("kg m**-2 s**-1", 86400.0),
        ("kg.m-2.s-1", 86400.0),
        ("mm", 1.0),
        ("mm/day", 1.0),
        ("mm d-1", 1.0),
        ("MM/DAY", 1.0),
        ("m", 1000.0),
        ("mm/h", 24.0),
    ],
)
def test_known_spellings(units, factor):
    assert precipitation_factor(units, "f.nc:pr") == factor


@pytest.mark.parametrize("units", [None, "", "furlongs per fortnight", "K"])
def test_unknown_or_missing_units_name_the_variable(units):
    with pytest.raises(InputError, match="f.nc:pr"):
        precipitation_factor(units, "f.nc:pr")
