"""MGMT per-modality CNN+LSTM late-fusion ensemble (seed 000)."""
