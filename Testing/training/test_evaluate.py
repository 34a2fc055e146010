import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from training.segmentation.evaluate import HD95_EMPTY_MM, dice, evaluate_pair, hd95, main

from conftest import REAL_DATA


def _perturbed(mask, rng, shift):
    out = np.roll(mask, shift, axis=(0, 1, 2))
    flip = rng.random(mask.shape) < 0.002
    return out ^ flip


def _monai(prediction, truth, spacing):
    p = torch.from_numpy(prediction[None, None].astype(np.float32))
    t = torch.from_numpy(truth[None, None].astype(np.float32))
    return (float(compute_dice(p, t, include_background=True)),
            float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)))


def _cases(small_phantom):
    rng = np.random.default_rng(0)
    labels = small_phantom.labels
    yield (labels > 0), _perturbed(labels > 0, rng, (1, -2, 0)), (2.5, 2.5, 2.5)
    yield (labels == 4), _perturbed(labels == 4, rng, (0, 1, 1)), (1.0, 2.0, 3.0)
    if REAL_DATA.is_dir():
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(next(REAL_DATA.glob("*/*_seg.nii.gz")))))
        yield (seg == 2), _perturbed(seg == 2, rng, (2, 0, -1)), (1.0, 1.0, 1.0)


def test_dice_and_hd95_match_monai(small_phantom):
    for truth, prediction, spacing in _cases(small_phantom):
        ours_dice, ours_hd = dice(prediction, truth), hd95(prediction, truth, spacing)
        monai_dice, monai_hd = _monai(prediction, truth, spacing)
        assert ours_dice == pytest.approx(monai_dice, abs=1e-6)
        assert ours_hd == pytest.approx(monai_hd, rel=1e-4, abs=1e-4)
        assert 0.1 < ours_dice < 1.0 and ours_hd > 0


def test_empty_regions_follow_the_brats_convention():
    empty = np.zeros((8, 8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(full, empty) == 0.0 and hd95(full, empty, (1, 1, 1)) == HD95_EMPTY_MM
    metrics = evaluate_pair(np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8), (1, 1, 1))
    assert metrics["dice_et"] == 1.0 and metrics["hd95_wt"] == 0.0


def test_cli_prints_a_table_and_writes_csv(tmp_path, phantom_dir, small_phantom, capsys):
    pred_dir = tmp_path / "pred"
    (pred_dir / small_phantom.case_id).mkdir(parents=True)
    labels = small_phantom.labels.copy()
    labels[labels == 1] = 4  # NCR predicted as ET: WT perfect, TC perfect, ET worse, ED perfect
    image = small_phantom.geometry.image_from_array(labels)
    sitk.WriteImage(image, str(pred_dir / small_phantom.case_id / "segmentation.nii.gz"))
    assert main([str(pred_dir), str(phantom_dir.parent)]) == 0
    table = capsys.readouterr().out
    assert small_phantom.case_id in table and "mean" in table
    rows = list(csv.DictReader(open(pred_dir / "metrics.csv")))
    assert float(rows[0]["dice_wt"]) == 1.0 and float(rows[0]["dice_tc"]) == 1.0
    assert float(rows[0]["dice_ed"]) == 1.0 and float(rows[0]["dice_et"]) < 0.9


def test_cli_refuses_missing_predictions(tmp_path, phantom_dir, capsys):
    assert main([str(tmp_path), str(phantom_dir.parent)]) == 2
    assert "no predictions" in capsys.readouterr().err
