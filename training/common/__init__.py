"""Shared training pieces: configs, data discovery, losses, metrics, plots, run records, stage options."""
