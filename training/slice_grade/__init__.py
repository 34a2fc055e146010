"""2D slice grade classifier with patient-level aggregation (seed 002)."""
