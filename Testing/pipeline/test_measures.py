"""Volumes and ratios from a contiguous label map."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from GliomaAnalysisLib.pipeline.measures import ratios, volumes_ml


@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
              elements=st.integers(0, 3)), st.floats(0.001, 0.02))
def test_volumes_count_each_label_and_sum_the_regions(labels, voxel_ml):
    counts = np.bincount(labels.ravel(), minlength=4) * voxel_ml
    volumes = volumes_ml(labels, voxel_ml)
    expected = {"ncr": counts[1], "ed": counts[2], "et": counts[3], "tc": counts[1] + counts[3],
                "wt": counts[1:].sum()}
    for region, value in expected.items():  # rounded to 0.01 mL
        assert volumes[region] == round(volumes[region], 2) and abs(volumes[region] - value) <= 0.005 + 1e-9


def test_ratios_are_fractions_of_the_whole_tumor_and_zero_without_one():
    labels = np.array([0, 1, 2, 2, 3, 3, 3, 3], np.uint8)
    assert ratios(volumes_ml(labels, 1.0)) == {"ncr": round(1 / 7, 4), "ed": round(2 / 7, 4), "et": round(4 / 7, 4)}
    assert ratios(volumes_ml(np.zeros(5, np.uint8), 1.0)) == {"ncr": 0.0, "ed": 0.0, "et": 0.0}
