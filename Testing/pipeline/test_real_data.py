"""Loading every real BraTS 2018 case in ../shared/data/brats18 (skipped when the folder is absent)."""
import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import MODALITIES, load_case, preprocess
from GliomaAnalysisLib.io.labels import to_contiguous

from conftest import REAL_DATA

CASES = sorted(p for p in REAL_DATA.iterdir() if p.is_dir()) if REAL_DATA.is_dir() else []
pytestmark = pytest.mark.skipif(not CASES, reason=f"real data not present at {REAL_DATA}")


@pytest.mark.parametrize("folder", CASES, ids=[p.name for p in CASES])
def test_real_case_loads_with_all_modalities_and_labels(folder):
    case = load_case(folder)
    assert case.case_id == folder.name
    assert case.present == list(MODALITIES) and case.warnings == []
    assert case.geometry.size == (240, 240, 155) and case.geometry.spacing == (1.0, 1.0, 1.0)
    labels = sitk.GetArrayViewFromImage(case.segmentation)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4} and labels.any()
    assert case.segmentation_convention == "brats2021"


def test_real_case_preprocesses_and_round_trips_exactly():
    case = load_case(CASES[0])
    pre = preprocess(case, divisible_by=8)
    assert pre.presence.tolist() == [1, 1, 1, 1]
    back = sitk.GetArrayFromImage(pre.to_reference(pre.labels, "label"))
    assert np.array_equal(back, to_contiguous(sitk.GetArrayFromImage(case.segmentation)))
    # the brain crop keeps every tumor voxel and is much smaller than the full grid
    assert pre.labels.astype(bool).sum() == (back > 0).sum()
    assert np.prod(pre.image.shape[1:]) < 0.6 * 240 * 240 * 155
