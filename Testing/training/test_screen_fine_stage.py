"""Coarse-to-fine screen: each fold's coarse and fine models composed as a shipped pair and its held-out cases
analysed by them, in the cross-validation's format."""
import json

import numpy as np
import pytest

from GliomaAnalysisLib.models.model_store import load_verified_card
from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.segmentation import cross_validate
from training.segmentation.screen_fine_stage import main


def test_the_screen_analyses_each_held_out_case_with_the_fold_pair(tmp_path, capsys):
    data = tmp_path / "data"
    write_cohort(data, 4, seed=5, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    common = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--batch", "1", "--steps", "2", "--n-folds",
              "2", "--val-every", "100", "--network", network, "--foreground-probability", "1"]
    coarse = tmp_path / "coarse"
    assert cross_validate.main(common + ["--run-dir", str(coarse), "--crop", "16", "--spacing", "4"]) == 0
    fine = tmp_path / "fine"
    assert cross_validate.main(common + ["--run-dir", str(fine), "--crop", "16", "--spacing", "3", "--folds", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "two_stage"
    args = ["--coarse", str(coarse), "--fine", str(fine), "--out", str(out), "--data", str(data)]
    assert main(args) == 0
    assert "folds 0 have a model in one run only" in capsys.readouterr().err
    held_out = json.loads((fine / "fold1" / "config.json").read_text())["validation_cases"]
    assert sorted(p.stem for p in (out / "oof").glob("*.npz")) == sorted(held_out)  # fold 1's only
    pair = out / "fold1" / "model"
    coarse_card = load_verified_card("glioma_seg_fold1", pair)
    fine_card = load_verified_card("glioma_seg_fine_fold1", pair)
    assert coarse_card["fine_stage"] == {"model": "glioma_seg_fine_fold1", "margin_mm": 10.0}
    assert coarse_card["preprocessing"]["spacing_mm"] == [4.0] * 3 and fine_card["window_voxels"] == 16
    assert fine_card["preprocessing"]["spacing_mm"] == [3.0] * 3
    assert coarse_card["sha256"] == load_verified_card("glioma_seg_fold1", coarse / "fold1" / "model")["sha256"]
    for case in held_out:
        stored = np.load(out / "oof" / f"{case}.npz")
        alone = np.load(coarse / "oof" / f"{case}.npz")
        assert str(stored["fine_stage"]) == "glioma_seg_fine_fold1" and str(alone["fine_stage"]) == ""
        assert np.array_equal(stored["truth"], alone["truth"]) and int(stored["fold"]) == 1
    fast_out = tmp_path / "two_stage_fast"
    assert main(args[:4] + ["--out", str(fast_out), "--data", str(data), "--fast"]) == 0
    for case in held_out:  # one pass of each network instead of the default's
        default, fast = np.load(out / "oof" / f"{case}.npz"), np.load(fast_out / "oof" / f"{case}.npz")
        assert int(default["passes"]) == int(default["fine_passes"]) == 2
        assert int(fast["passes"]) == int(fast["fine_passes"]) == 1
    with pytest.raises(SystemExit, match="predicted with 1 coarse pass, not this screen's 2"):
        main(args[:4] + ["--out", str(fast_out), "--data", str(data)])  # the other mode: not mixed in
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamp  # resumable: nothing done twice
    assert cross_validate.report(out)["cases"] == len(held_out)
    with pytest.raises(SystemExit, match="window_max_voxels must be a multiple"):  # checked before it is kept
        main(args[:4] + ["--out", str(tmp_path / "o2"), "--data", str(data), "--window-max", "17"])
    assert not (tmp_path / "o2" / "fold1" / "model").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--fine-passes", "0"])
    assert exit_info.value.code == 2
    capsys.readouterr()

    card_path = pair / "glioma_seg_fold1.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "fine_stage": {"model": "glioma_seg_fine_fold1", "margin_mm": 5.0}}))
    with pytest.raises(SystemExit, match="not the pair of .* as they are now"):  # stale: stored with another margin
        main(args)
    assert main(args + ["--margin-mm", "5"]) == 0  # the pair of that margin: the stored one
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--margin-mm", "-1"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    config = json.loads((fine / "fold1" / "config.json").read_text())
    (fine / "fold1" / "config.json").write_text(json.dumps({**config, "validation_cases": config["train_cases"]}))
    with pytest.raises(SystemExit, match="holds out other cases than"):
        main(["--coarse", str(coarse), "--fine", str(fine), "--out", str(tmp_path / "o3"), "--data", str(data)])
    assert main(["--coarse", str(tmp_path / "none"), "--fine", str(fine), "--out", str(out)]) == 2
    assert main(["--coarse", str(coarse), "--fine", str(tmp_path / "none"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no trained coarse fold models" in err[0] and "no trained fine fold models" in err[1]
