"""Advanced training: missing-modality adaptation and semi-supervised stages."""
