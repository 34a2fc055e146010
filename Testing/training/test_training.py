"""The training loop: augmentation invariants, checkpoint + resume, and the loss."""
import json

import numpy as np
import torch

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.common.losses import dice_ce_loss
from training.segmentation.segmentation_data import TrainingCase, sample_crop, tumor_protect_crop
from training.segmentation.train_segmentation import main


def test_tumor_protect_crop_keeps_the_whole_tumor_when_it_fits():
    labels = np.zeros((80, 90, 70), dtype=np.uint8)
    labels[30:50, 10:40, 50:65] = 2
    rng = np.random.default_rng(0)
    for _ in range(50):
        where = tumor_protect_crop(labels, 48, rng, random_probability=0.0)
        assert labels[where].sum() == labels.sum()
        assert all(s.stop - s.start == 48 for s in where)


def test_crops_are_augmented_consistently():
    rng = np.random.default_rng(1)
    image = np.zeros((4, 40, 40, 40), dtype=np.float32)
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    image[:, 5:35, 5:35, 5:35] = 1.0
    labels[10:20, 10:20, 10:30] = 3
    image[:, labels == 3] = 5.0  # the tumor is bright in every channel
    case = TrainingCase("c", image, labels)
    dropped = 0
    for _ in range(40):
        x, y, presence = sample_crop(case, 32, rng, modality_dropout=0.5)
        assert x.shape == (4, 32, 32, 32) and y.shape == (32, 32, 32) and presence.sum() >= 1
        present = presence.astype(bool)
        assert np.all(x[~present] == 0)
        assert np.all(x[present][:, y == 3] > 4.0)  # labels moved with the image (flips)
        dropped += int(presence.sum() < 4)
    assert 5 < dropped < 35


def test_loss_is_low_for_a_confident_right_answer():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6, 2:6] = 2
    labels[0, 3:5, 3:5, 3:5] = 3
    right = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float() * 20
    wrong = torch.roll(right, 1, dims=1)
    assert dice_ce_loss(right, labels) < 0.05 < dice_ce_loss(wrong, labels)


def test_training_checkpoints_and_resumes(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "run"
    common = ["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--crop", "16",
              "--batch", "1", "--phantoms", "0", "--checkpoint-every", "1", "--spacing", "4",
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
    assert config["validation_split"] and len(config["train_cases"]) == 2


def test_validation_scores_a_perfect_and_an_empty_prediction():
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
    from training.segmentation.train_segmentation import validate

    torch.manual_seed(0)
    model = GliomaSegNet(NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, transformer_heads=2))
    labels = np.zeros((10, 12, 9), dtype=np.uint8)
    labels[3:6, 3:7, 2:5] = 2
    case = TrainingCase("c", np.random.default_rng(0).normal(size=(4, 10, 12, 9)).astype(np.float32), labels)
    scores = validate(model, [case])
    assert set(scores) == {"wt", "tc", "et"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert model.training  # back in training mode
    with torch.no_grad():  # a model that always answers background: ET and TC are empty in both -> Dice 1, WT 0
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    assert validate(model, [case]) == {"wt": 0.0, "tc": 1.0, "et": 1.0}
