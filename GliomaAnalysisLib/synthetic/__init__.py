"""Synthetic phantoms for tests, demos and training smoke runs (never real data)."""
