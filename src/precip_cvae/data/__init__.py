"""Data: the synthetic benchmark, readers of SRDRN arrays and NetCDF/Zarr, normalization, preparation."""
