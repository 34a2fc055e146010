"""Training batches drawn by worker processes (the same for any number of workers and on resume), and the training
pack that carries the preprocessed arrays to a machine without the NIfTI files."""
import csv

import numpy as np
import pytest

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.common.datasets import TrainingDataError
from training.common.folds import read_case_infos
from training.segmentation.augmentation import AugmentationConfig
from training.segmentation.crop_stream import CropSettings, batches
from training.segmentation.pack_arrays import INTENSITY_STEP, main as pack_main
from training.segmentation.segmentation_data import TrainingCase, load_cases


def _cases() -> list:
    rng = np.random.default_rng(0)
    cases = []
    for index in range(3):
        labels = np.zeros((30, 34, 28), dtype=np.uint8)
        labels[8 + index:18, 10:20, 9:19] = 2
        labels[11:15, 12:16, 12:16] = 3
        cases.append(TrainingCase(f"c{index}", rng.normal(size=(4, 30, 34, 28)).astype(np.float32), labels))
    return cases


def test_batches_are_the_same_for_any_number_of_workers_and_on_resume():
    cases = _cases()
    settings = CropSettings(batch=2, crop=16, foreground_probability=0.5, augmentation=AugmentationConfig(), seed=3)
    alone = list(batches(cases, settings, 0, 5))
    assert alone[0][0].shape == (2, 4, 16, 16, 16) and alone[0][1].shape == (2, 4, 16, 16, 16)
    assert alone[0][2].shape == (2, 4)
    pooled = list(batches(cases, settings, 0, 5, workers=2))
    resumed = list(batches(cases, settings, 3, 5, workers=1))
    for mine, theirs in zip(alone, pooled):
        assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    for mine, theirs in zip(alone[3:], resumed):
        assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    assert not np.array_equal(alone[0][0], alone[1][0])  # each step its own crops
    other_rank = next(batches(cases, CropSettings(2, 16, 0.5, AugmentationConfig(), 3, rank=1), 0, 1))
    assert not np.array_equal(other_rank[0], alone[0][0])


def test_a_pack_gives_back_the_cached_cases(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    spacing = (4.0, 4.0, 4.0)
    cached = load_cases([data], tmp_path / "cache", spacing)
    pack = tmp_path / "pack"
    assert pack_main(["--out", str(pack), "--data", str(data), "--cache", str(tmp_path / "cache"),
                      "--spacing", "4"]) == 0
    packed = load_cases([pack], tmp_path / "elsewhere", spacing)
    assert [c.case_id for c in packed] == [c.case_id for c in cached]
    for mine, theirs in zip(cached, packed):
        assert np.array_equal(mine.labels, theirs.labels) and np.array_equal(mine.soft, theirs.soft)
        assert np.abs(mine.image - theirs.image).max() <= INTENSITY_STEP / 2 + 1e-6
    assert not (tmp_path / "elsewhere").exists()  # nothing preprocessed again
    ids = [c.case_id for c in cached]
    assert read_case_infos([pack], ids) == read_case_infos([data], ids)  # the same grades and sources: same folds
    with pytest.raises(TrainingDataError, match=f"case {ids[0]} is in more than one data root"):
        load_cases([pack, data], tmp_path / "cache", spacing)  # each case would be trained on twice
    with open(pack / "labels.csv", newline="") as handle:
        assert sorted(r["case_id"] for r in csv.DictReader(handle)) == sorted(ids)
    with pytest.raises(TrainingDataError, match="asked for"):
        load_cases([pack], tmp_path / "cache", (2.0, 2.0, 2.0))
    from training.segmentation.export_segmentation import data_source

    assert data_source(str(pack)) == f"{pack}: a training pack of {data}"  # a card trained on it names the NIfTI roots
    assert data_source(str(data)) == str(data)


def test_packing_nothing_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert pack_main(["--out", str(tmp_path / "pack"), "--data", str(tmp_path / "empty")]) == 2
    assert "no labelled cases" in capsys.readouterr().err and not (tmp_path / "pack").exists()


def test_folds_train_side_by_side_and_come_back_as_float16_bundles(tmp_path):
    import json
    import tarfile

    import torch
    from safetensors.torch import load_file

    from training.segmentation.train_folds import main as train_folds

    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    run, out = tmp_path / "run", tmp_path / "out"
    assert train_folds(["--folds", "0,all", "--run-dir", str(run), "--bundle-out", str(out), "--data", str(data),
                        "--cache", str(tmp_path / "cache"), "--crop", "16", "--batch", "1", "--n-folds", "2",
                        "--spacing", "4", "--steps", "2", "--workers", "1", "--network", network]) == 0
    for fold in ("0", "all"):
        with tarfile.open(out / f"fold{fold}.tar") as tar:
            tar.extractall(tmp_path / "back", filter="data")
        back = load_file(str(tmp_path / "back" / f"fold{fold}" / "final.safetensors"))
        trained = load_file(str(run / f"fold{fold}" / "final.safetensors"))
        assert all(back[k].dtype == torch.float16 and torch.equal(back[k], trained[k].half())
                   for k in trained if trained[k].is_floating_point())
        config = json.loads((tmp_path / "back" / f"fold{fold}" / "config.json").read_text())
        assert config["args"]["fold"] == fold and config["args"]["steps"] == 2
    assert len(json.loads((run / "fold0" / "config.json").read_text())["validation_cases"]) == 1


def test_train_folds_checks_the_options_before_starting_anything(tmp_path):
    from training.segmentation.train_folds import main as train_folds

    with pytest.raises(SystemExit):
        train_folds(["--folds", "0", "--run-dir", str(tmp_path / "run"), "--no-such-option", "1"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        train_folds(["--folds", "0,zero", "--run-dir", str(tmp_path / "run")])
    torch = pytest.importorskip("torch")
    with pytest.MonkeyPatch.context() as patch:  # emulated bfloat16: refused once, before any fold starts
        patch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        patch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert train_folds(["--folds", "0,1", "--run-dir", str(tmp_path / "run"), "--device", "cpu",
                            "--cpu-bf16"]) == 2
    assert not (tmp_path / "run").exists()


def test_a_pack_that_cannot_be_written_leaves_nothing(tmp_path):
    from training.segmentation.pack_arrays import write_pack

    good, bad = _cases()[:2]
    bad.image[0, 0, 0, 0] = 1000.0  # beyond int16 at 1/64 SD
    with pytest.raises(TrainingDataError, match="c1: intensities beyond"):
        write_pack([good, bad], [], tmp_path / "pack", (2.0, 2.0, 2.0))
    assert list(tmp_path.iterdir()) == []
