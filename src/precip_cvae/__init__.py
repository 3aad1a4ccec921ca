"""precip-cvae: a conditional VAE for daily precipitation downscaling and honest augmentation tests."""

__version__ = "0.1.0"
