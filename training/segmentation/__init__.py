"""Segmentation network: training, data, export, evaluation and the missing-modality evaluation."""
