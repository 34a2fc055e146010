import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from GliomaAnalysisLib.io.labels import from_contiguous, guess_convention, regions, to_contiguous


def test_brats2021_maps_to_contiguous_and_back():
    file_labels = np.array([0, 1, 2, 4, 4, 0], dtype=np.uint8)
    contiguous = to_contiguous(file_labels, "brats2021")
    assert contiguous.tolist() == [0, 1, 2, 3, 3, 0]
    assert from_contiguous(contiguous, "brats2021").tolist() == file_labels.tolist()
    assert from_contiguous(contiguous, "brats2023").tolist() == [0, 1, 2, 3, 3, 0]


def test_unknown_labels_are_refused():
    with pytest.raises(ValueError, match=r"\[3\]"):
        to_contiguous(np.array([0, 3]), "brats2021")
    with pytest.raises(ValueError, match="unknown label convention"):
        to_contiguous(np.array([0]), "brats2030")


def test_convention_is_guessed_from_the_labels():
    assert guess_convention(np.array([0, 1, 2, 4])) == "brats2021"
    assert guess_convention(np.array([0, 1, 2, 3])) == "brats2023"
    assert guess_convention(np.array([0, 2])) == "brats2021"


def test_regions_follow_brats_definitions():
    r = regions(np.array([0, 1, 2, 3]))
    assert r["wt"].tolist() == [False, True, True, True]
    assert r["tc"].tolist() == [False, True, False, True]
    assert r["et"].tolist() == [False, False, False, True]


@given(arrays(np.uint8, st.integers(1, 50), elements=st.sampled_from([0, 1, 2, 4])),
       st.sampled_from(["brats2021", "brats2023"]))
def test_round_trip_through_any_convention(file_labels, target):
    contiguous = to_contiguous(file_labels, "brats2021")
    assert np.array_equal(to_contiguous(from_contiguous(contiguous, target), target), contiguous)
