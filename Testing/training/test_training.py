"""The training loop: augmentation invariants, checkpoint + resume, and the loss."""
import json

import numpy as np
import pytest
import torch

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.common.losses import dice_ce_loss, segmentation_loss
from training.segmentation.segmentation_data import TrainingCase, sample_crop, sample_training_crop, tumor_protect_crop
from training.segmentation.train_segmentation import main


def test_tumor_protect_crop_keeps_the_whole_tumor_when_it_fits():
    labels = np.zeros((80, 90, 70), dtype=np.uint8)
    labels[30:50, 10:40, 50:65] = 2
    rng = np.random.default_rng(0)
    for _ in range(50):
        where = tumor_protect_crop(labels, 48, rng, random_probability=0.0)
        assert labels[where].sum() == labels.sum()
        assert all(s.stop - s.start == 48 for s in where)


def _bright_tumor_case() -> TrainingCase:
    """A 40^3 case whose ET block is bright (5.0) in every channel, inside a brain of 1.0."""
    image = np.zeros((4, 40, 40, 40), dtype=np.float32)
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    image[:, 5:35, 5:35, 5:35] = 1.0
    labels[10:20, 10:20, 10:30] = 3
    image[:, labels == 3] = 5.0
    return TrainingCase("c", image, labels)


def test_crops_are_augmented_consistently():
    rng = np.random.default_rng(1)
    case = _bright_tumor_case()
    dropped = 0
    for _ in range(40):
        x, y, presence = sample_crop(case, 32, rng, modality_dropout=0.5)
        assert x.shape == (4, 32, 32, 32) and y.shape == (32, 32, 32) and presence.sum() >= 1
        present = presence.astype(bool)
        assert np.all(x[~present] == 0)
        assert np.all(x[present][:, y == 3] > 4.0)  # labels moved with the image (flips)
        dropped += int(presence.sum() < 4)
    assert 5 < dropped < 35


class _CountingRng:
    """A Generator that counts calls to ``random()``."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), 0

    def random(self, *args):
        self.calls += 1
        return self.rng.random(*args)

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)


def test_random_crop_placement_is_one_draw_per_crop_not_per_axis():
    labels = np.zeros((80, 90, 70), dtype=np.uint8)
    labels[30:50, 10:40, 50:65] = 2
    rng = _CountingRng(0)
    for _ in range(20):
        tumor_protect_crop(labels, 48, rng, random_probability=0.5)
    assert rng.calls == 20


def test_recipe_crops_are_augmented_consistently():
    rng = np.random.default_rng(1)
    case = _bright_tumor_case()
    one_missing = subsets = 0
    for _ in range(60):
        x, soft, presence = sample_training_crop(case, 32, rng)
        assert x.shape == (4, 32, 32, 32) and soft.shape == (4, 32, 32, 32) and presence.sum() >= 1
        assert np.allclose(soft.sum(axis=0), 1.0, atol=1e-4)
        present = presence.astype(bool)
        assert np.all(x[~present] == 0)
        tumor, brain = soft[3] > 0.9, (x[present] != 0).any(axis=0) & (soft[0] > 0.9)
        if tumor.sum() > 50 and brain.sum() > 50:  # labels moved with the image (rotation, scale, flips)
            assert all(x[c][tumor].mean() > x[c][brain].mean() for c in np.flatnonzero(present))
        one_missing += int(presence.sum() == 3)
        subsets += int(presence.sum() < 4)
    assert 5 < one_missing and subsets < 45


def test_drop_one_weights_choose_which_modality_is_missing():
    from training.segmentation.augmentation import AugmentationConfig, modality_presence

    rng = np.random.default_rng(0)
    config = AugmentationConfig(keep_all_probability=0.0, drop_one_probability=1.0, drop_one_weights=(1, 0, 0, 3))
    missing = [int(np.flatnonzero(modality_presence(rng, np.ones(4, bool), config) == 0)[0]) for _ in range(400)]
    counts = np.bincount(missing, minlength=4)
    assert counts[1] == counts[2] == 0 and 240 < counts[3] < 360 and counts[0] + counts[3] == 400
    only_t1_t2 = modality_presence(rng, np.array([True, False, True, False]), config)  # odds over what is there
    assert only_t1_t2.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_absent_modalities_are_never_shown_and_the_rest_still_drop_out():
    """--absent-modalities flair: no crop keeps FLAIR; the other three are all kept, one missing or a subset, as
    in the usual recipe. A bad name or all four absent is a one-line error."""
    from training.segmentation.augmentation import AugmentationConfig, modality_presence
    from training.segmentation.train_segmentation import absent_modalities

    assert absent_modalities("flair") == (False, False, False, True)
    assert absent_modalities(" T1CE, flair ") == (False, True, False, True)
    assert absent_modalities(None) == (False, False, False, False)
    for bad in ("pd", "t1,t1ce,t2,flair"):
        with pytest.raises(SystemExit, match="--absent-modalities"):
            absent_modalities(bad)
    rng = np.random.default_rng(0)
    config = AugmentationConfig(absent=absent_modalities("flair"))
    draws = np.array([modality_presence(rng, np.ones(4, bool), config) for _ in range(400)])
    assert draws[:, 3].max() == 0.0 and draws[:, :3].sum(1).min() >= 1
    kept_three = int((draws[:, :3].sum(1) == 3).sum())
    assert 160 < kept_three < 260  # keep_all_probability 0.5 of the draws, plus subsets that happen to keep all

def test_enhancement_is_not_scored_without_t1ce():
    """A crop without T1CE is scored on the core (NCR + ET) only: calling true ET voxels NCR or ET costs the same,
    for any logits. With T1CE the two answers differ."""
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6, 2:6] = 2
    labels[0, 3:5, 3:5, 3:5] = 3
    soft = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    says_et = soft * 10
    says_ncr = says_et.clone()
    says_ncr[:, 1], says_ncr[:, 3] = says_et[:, 3], says_et[:, 1]
    without, with_t1ce = torch.tensor([0.0]), torch.tensor([1.0])
    assert torch.isclose(segmentation_loss(says_et, soft, without), segmentation_loss(says_ncr, soft, without))
    assert segmentation_loss(says_ncr, soft, with_t1ce) > segmentation_loss(says_et, soft, with_t1ce) + 0.1
    random = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    swapped = random[:, [0, 3, 2, 1]]  # NCR and ET exchanged everywhere
    assert torch.isclose(segmentation_loss(random, soft, without), segmentation_loss(swapped, soft, without))


def test_loss_is_low_for_a_confident_right_answer():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6, 2:6] = 2
    labels[0, 3:5, 3:5, 3:5] = 3
    right = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float() * 20
    wrong = torch.roll(right, 1, dims=1)
    assert dice_ce_loss(right, labels) < 0.05 < dice_ce_loss(wrong, labels)
    soft = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    scored = torch.tensor([1.0])
    assert segmentation_loss(right, soft, scored) < 0.05 < segmentation_loss(wrong, soft, scored)


def test_the_dice_term_scores_only_the_chosen_regions():
    """With ``dice_regions`` (tc, et) a wrong whole-tumor extent costs only cross-entropy: the Dice term of a
    prediction whose core and enhancement are right but whose edema spills over is the same as for a right one."""
    from training.common.losses import segmentation_loss as loss
    import argparse

    from training.segmentation.train_segmentation import dice_regions

    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6, 2:6] = 2
    labels[0, 3:5, 3:5, 3:5] = 3
    soft = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    spilled = labels.clone()
    spilled[0, 0:2] = 2  # edema over two more slices
    spill = torch.nn.functional.one_hot(spilled, 4).permute(0, 4, 1, 2, 3).float() * 20
    scored = torch.tensor([1.0])
    ce_only = loss(spill, soft, scored, dice_weight=0.0)
    assert torch.isclose(loss(spill, soft, scored, dice_weight=1.0, dice_regions=("tc", "et")), ce_only, atol=1e-4)
    assert loss(spill, soft, scored, dice_weight=1.0) > ce_only + 0.05  # WT's Dice counts by default
    assert dice_regions("TC, et") == ("tc", "et")
    with pytest.raises(argparse.ArgumentTypeError):
        dice_regions("core")


def test_training_checkpoints_and_resumes(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "run"
    common = ["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--crop", "16",
              "--batch", "1", "--fold", "0", "--n-folds", "2", "--checkpoint-every", "1", "--spacing", "4",
              "--network", json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1,
                                       "transformer_heads": 2})]
    assert main(common + ["--steps", "2"]) == 0
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2
    with open(run / "log.jsonl", "a") as log:  # a step logged after the last checkpoint, then a crash
        log.write(json.dumps({"step": 3, "loss": 1.0, "lr": 0.1, "seconds": 99.0}) + "\n")
    assert main(common + ["--steps", "3", "--resume"]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["seconds"] >= records[1]["seconds"] and records[2]["loss"] != 1.0
    second = torch.load(run / "checkpoint.pt", weights_only=True)
    assert second["step"] == 3
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert (run / "final.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert len(config["validation_cases"]) == 1 and len(config["train_cases"]) == 1
    final_scores = records[2]["val_cases"]  # the final step's per-case validation Dice (compare_validation)
    assert set(final_scores) == set(config["validation_cases"])
    assert records[2]["val_dice"] == pytest.approx(next(iter(final_scores.values())), abs=1e-4)
    assert "val_cases" not in records[0]  # only the final model's
    assert set(config["validation_cases"] + config["train_cases"]) == set(config["folds"])
    with pytest.raises(SystemExit, match=r"--dice-weight 0\.5 -> 0\.0.*new --run-dir"):  # another recipe: refused
        main(common + ["--steps", "3", "--resume", "--dice-weight", "0.0"])
    assert json.loads((run / "config.json").read_text()) == config  # and the run's record is left as it was


def test_warm_restart_starts_from_the_given_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    common = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--crop", "16", "--batch", "1",
              "--fold", "0", "--n-folds", "2", "--spacing", "4", "--steps", "1", "--lr", "0",
              "--network", json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1,
                                       "transformer_heads": 2})]
    assert main(common + ["--run-dir", str(tmp_path / "first"), "--lr", "0.01"]) == 0
    start = load_file(str(tmp_path / "first" / "final.safetensors"))
    save_file(start, str(tmp_path / "fold0.safetensors"))
    assert main(common + ["--run-dir", str(tmp_path / "again"),
                          "--init-weights", str(tmp_path / "fold{fold}.safetensors")]) == 0
    again = load_file(str(tmp_path / "again" / "final.safetensors"))  # learning rate 0: the weights stay
    assert all(torch.equal(start[k], again[k]) for k in start if "num_batches" not in k)
    fresh = load_file(str(tmp_path / "first" / "final.safetensors"))
    assert main(common + ["--run-dir", str(tmp_path / "fresh"), "--seed", "5"]) == 0
    assert any(not torch.equal(fresh[k], v) for k, v in load_file(str(tmp_path / "fresh" / "final.safetensors")).items())
    with pytest.raises(SystemExit, match="no such file"):
        main(common + ["--run-dir", str(tmp_path / "x"), "--init-weights", str(tmp_path / "missing.safetensors")])


def test_validation_scores_a_perfect_and_an_empty_prediction():
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
    from training.segmentation.train_segmentation import mean_dice, validation_dice

    torch.manual_seed(0)
    model = GliomaSegNet(NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, transformer_heads=2))
    labels = np.zeros((10, 12, 9), dtype=np.uint8)
    labels[3:6, 3:7, 2:5] = 2
    case = TrainingCase("c", np.random.default_rng(0).normal(size=(4, 10, 12, 9)).astype(np.float32), labels)
    scores = validation_dice(model, [case])
    assert set(scores) == {"c"} and set(scores["c"]) == {"wt", "tc", "et"}
    assert all(0.0 <= v <= 1.0 for v in scores["c"].values())
    assert model.training  # back in training mode
    with torch.no_grad():  # a model that always answers background: ET and TC are empty in both -> Dice 1, WT 0
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    other = TrainingCase("d", case.image, np.where(labels > 0, 3, 0).astype(np.uint8))  # ET present: Dice 0
    scores = validation_dice(model, [case, other])
    assert scores == {"c": {"wt": 0.0, "tc": 1.0, "et": 1.0}, "d": {"wt": 0.0, "tc": 0.0, "et": 0.0}}
    assert mean_dice(scores) == {"wt": 0.0, "tc": 0.5, "et": 0.5}


def test_the_affine_crop_samples_as_scipy_does():
    from scipy import ndimage

    from training.segmentation.augmentation import affine_sample, rotation_matrix

    rng = np.random.default_rng(4)
    volume = rng.normal(size=(3, 30, 26, 22)).astype(np.float32)
    fill = np.array([1.0, 0.0, -2.0], dtype=np.float32)
    for _ in range(4):
        matrix = rotation_matrix(np.deg2rad(rng.uniform(-15, 15, 3))) * rng.uniform(0.85, 1.2)
        matrix[:, 1] *= -1  # a flip
        offset = rng.uniform(5, 20, 3) - matrix @ np.full(3, 11.5)  # part of the crop outside the volume
        ours, = affine_sample([volume], [fill], matrix, offset, 24)
        scipy = np.stack([ndimage.affine_transform(volume[c], matrix, offset, output_shape=(24,) * 3, order=1,
                                                   mode="constant", cval=float(fill[c]), prefilter=False)
                          for c in range(3)])
        assert ours.shape == (3, 24, 24, 24) and ours.dtype == np.float32
        assert np.abs(ours - scipy).max() < 1e-3
        assert (ours == fill[:, None, None, None]).all(axis=0).any()  # some voxels outside: the fill
