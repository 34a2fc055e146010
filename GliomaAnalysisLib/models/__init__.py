"""Models: the networks, their weights store, calibration and patch inference."""
