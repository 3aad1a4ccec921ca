"""Downstream deterministic downscaling (SRDRN) and its losses, for testing cVAE-based data augmentation."""
