"""Downstream deterministic downscaling (SRDRN) and its losses, for testing cVAE-based data augmentation."""

#: The experiment's arms, in report order (kept here, free of heavy imports, for the command line too).
ARMS = ("baseline", "augment", "oversample", "reweight", "quantile", "quantile_augment", "augment_newx")
