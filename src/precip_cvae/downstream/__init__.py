"""Downstream deterministic downscaling (SRDRN) and its losses, for testing cVAE-based data augmentation."""

from precip_cvae.config import ARMS

__all__ = ["ARMS"]
