"""The label-contrast check flags an enhancing-tumor label that does not enhance on T1CE, and only that one."""
import numpy as np

from training.segmentation.label_contrast import T1, T1CE, label_contrast, main, markdown_table
from training.segmentation.segmentation_data import TrainingCase


def _case(case_id: str, et_enhancement: float) -> TrainingCase:
    image = np.zeros((4, 20, 20, 20), np.float32)
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # edema, 1000 voxels
    labels[8:12, 8:12, 8:12] = 3  # ET, 64 voxels
    labels[9:11, 9:11, 9:11] = 1  # necrosis inside, 8 voxels
    image[T1] = 0.3
    image[T1CE][labels == 3] = 0.3 + et_enhancement
    image[T1CE][labels == 2] = -0.5
    return TrainingCase(case_id, image, labels)


def test_an_et_label_without_enhancement_is_flagged():
    enhancing, flat = label_contrast(_case("a", 2.0), 0.008), label_contrast(_case("b", 0.1), 0.008)
    assert enhancing.volume_ml == {"ncr": 8 * 0.008, "ed": (1000 - 64) * 0.008, "et": (64 - 8) * 0.008}
    assert np.isclose(enhancing.enhancement, 2.0) and np.isclose(enhancing.t1ce["et"], 2.3)
    assert np.isclose(enhancing.t1ce["ed"], -0.5) and np.isclose(flat.enhancement, 0.1)
    assert not enhancing.flagged(0.5) and flat.flagged(0.5)
    table = markdown_table([enhancing, flat], 0.5).splitlines()
    assert table[2].startswith("| b |") and table[2].endswith("| ET label does not enhance |")  # flagged first
    assert table[3].startswith("| a |") and table[3].endswith("|  |")


def test_a_case_without_et_is_not_flagged():
    case = _case("c", 2.0)
    case.labels[case.labels == 3] = 1
    row = label_contrast(case, 0.008)
    assert row.enhancement is None and row.t1ce["et"] is None and not row.flagged(0.5)


def test_no_cases_is_a_one_line_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no labelled cases found under {tmp_path}"
