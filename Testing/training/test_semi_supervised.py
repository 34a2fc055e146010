"""Semi-supervised stages: dual thresholds, ignored voxels, distribution alignment, EMA, complementary dropout."""
from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save_file

from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.advanced.semi_supervised import (IGNORE, ComplementaryDropout, brightness_contrast, class_distribution,
                                      complementary_masks, cutmix, cutmix_box, distribution_alignment, ema_update,
                                      gaussian_blur, main, masked_dice_ce_loss, mc_dropout_statistics,
                                      reliable_pseudo_labels)

TINY = {"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2}
TINY_DEEP = {"widths": [4, 8, 16, 32], "encoder_blocks": [1, 1, 1, 1], "transformer_layers": 1,
             "transformer_heads": 2}  # whole-volume passes: attention over 1/8-resolution tokens only


def test_dual_thresholds_keep_only_confident_and_certain_voxels():
    aligned = np.zeros((4, 1, 1, 5), dtype=np.float32)
    std = np.zeros_like(aligned)
    # voxel: 0 kept (class 2), 1 too uncertain, 2 not confident, 3 confidence exactly 0.95, 4 kept (class 0)
    for voxel, (cls, p, s) in enumerate([(2, 0.97, 0.05), (1, 0.99, 0.2), (3, 0.90, 0.01), (1, 0.95, 0.0),
                                         (0, 0.999, 0.099)]):
        aligned[:, 0, 0, voxel] = (1 - p) / 3
        aligned[cls, 0, 0, voxel] = p
        std[cls, 0, 0, voxel] = s
    labels, kept = reliable_pseudo_labels(aligned, std, confidence=0.95, uncertainty=0.1)
    assert kept[0, 0].tolist() == [True, False, False, False, True]
    assert labels[0, 0].tolist() == [2, IGNORE, IGNORE, IGNORE, 0]


def test_ignored_voxels_neither_change_the_loss_nor_get_gradient():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (1, 6, 6, 6))
    labels[0, :3] = IGNORE
    logits = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    loss = masked_dice_ce_loss(logits, labels)
    loss.backward()
    assert torch.all(logits.grad[0, :, :3] == 0) and torch.any(logits.grad[0, :, 3:] != 0)
    changed = logits.detach().clone()
    changed[0, :, :3] = torch.randn(4, 3, 6, 6) * 10
    assert torch.allclose(masked_dice_ce_loss(changed, labels), loss.detach())
    everything_ignored = torch.full_like(labels, IGNORE)
    assert masked_dice_ce_loss(logits, everything_ignored).item() == 0.0
    plain = labels.clone()
    plain[0, :3] = 0
    from training.common.losses import dice_ce_loss
    assert torch.allclose(masked_dice_ce_loss(logits, plain), dice_ce_loss(logits, plain))  # nothing ignored


def test_distribution_alignment_rescales_towards_the_labelled_distribution():
    p = np.array([[0.5, 0.9], [0.5, 0.1]], dtype=np.float32)  # (classes 2, voxels 2)
    same = distribution_alignment(p, np.array([0.3, 0.7]), np.array([0.3, 0.7]))
    assert np.allclose(same, p)
    aligned = distribution_alignment(p, target=np.array([0.8, 0.2]), predicted=np.array([0.5, 0.5]))
    assert np.allclose(aligned[:, 0], [0.8, 0.2]) and np.allclose(aligned.sum(axis=0), 1.0)
    assert aligned[0, 1] > p[0, 1]
    volume = np.random.default_rng(0).dirichlet(np.ones(4), size=(3, 4, 5)).transpose(3, 0, 1, 2)
    predicted = volume.reshape(4, -1).mean(axis=1)
    target = np.array([0.7, 0.1, 0.1, 0.1])
    moved = distribution_alignment(volume, target, predicted).reshape(4, -1).mean(axis=1)
    assert np.abs(moved - target).sum() < np.abs(predicted - target).sum()
    labels = [np.array([[[0, 0, 1, 3]]], dtype=np.uint8)]
    brains = [np.array([[[True, False, True, True]]])]
    assert np.allclose(class_distribution(labels, brains), [1 / 3, 1 / 3, 0, 1 / 3])


def test_ema_update_blends_parameters():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    snapshot = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), snapshot))


def test_complementary_dropout_masks_are_complementary():
    first, second = complementary_masks(3, 64, torch.Generator().manual_seed(0))
    assert torch.all(first + second == 1) and torch.all(first * second == 0)
    assert set(first.unique().tolist()) == {0.0, 1.0} and 0.3 < first.mean().item() < 0.7
    module = torch.nn.Identity()
    with ComplementaryDropout(module, torch.Generator().manual_seed(1)) as dropout:
        out = module(torch.ones(4, 8, 2, 2, 2))
    half_a, half_b = out[:2], out[2:]
    assert torch.all(half_a + half_b == 2.0) and torch.all(half_a * half_b == 0)  # every channel in exactly one
    m1, _ = dropout.last
    assert torch.equal(half_a[:, :, 0, 0, 0], 2 * m1)
    assert torch.equal(module(torch.ones(2, 8)), torch.ones(2, 8))  # hook removed at exit


def test_strong_augmentations_keep_background_and_labels_consistent():
    rng = np.random.default_rng(0)
    x = torch.zeros(2, 4, 8, 8, 8)
    x[:, :3, 2:6, 2:6, 2:6] = 1.0  # channel 3 absent
    jittered = brightness_contrast(x, rng)
    assert torch.all(jittered[:, :, :2] == 0) and torch.all(jittered[:, 3] == 0)
    assert not torch.equal(jittered, x)
    constant = torch.full((1, 1, 9, 9, 9), 2.0)
    assert torch.allclose(gaussian_blur(constant, 0.8)[0, 0, 4, 4, 4], torch.tensor(2.0))
    spike = torch.zeros(1, 1, 9, 9, 9)
    spike[0, 0, 4, 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert torch.allclose(blurred.sum(), torch.tensor(1.0), atol=1e-5) and blurred[0, 0, 4, 4, 4] < 0.5
    box = cutmix_box((8, 8, 8), rng)
    assert 0.05 < box.mean() < 0.5
    xa, xb = torch.zeros(4, 8, 8, 8), torch.ones(4, 8, 8, 8)
    ya, yb = torch.zeros(8, 8, 8, dtype=torch.long), torch.full((8, 8, 8), 2)
    mixed, labels = cutmix(xa, ya, xb, yb, box)
    assert np.array_equal(mixed[0].bool().numpy(), box) and np.array_equal((labels == 2).numpy(), box)


def test_mc_dropout_statistics_spread_only_with_dropout():
    image = np.random.default_rng(0).normal(size=(4, 14, 16, 15)).astype(np.float32)
    torch.manual_seed(0)
    with_dropout = GliomaSegNet(NetworkConfig(**TINY, dropout=0.5))
    mean, std = mc_dropout_statistics(with_dropout, image, passes=4)
    assert mean.shape == std.shape == (4, 14, 16, 15) and np.allclose(mean.sum(0), 1, atol=1e-5)
    assert std.max() > 0.01
    without = GliomaSegNet(NetworkConfig(**TINY, dropout=0.0))
    assert mc_dropout_statistics(without, image, passes=3)[1].max() < 1e-6


def test_semi_supervised_run_writes_both_stages_and_pseudo_label_report(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_file(GliomaSegNet(NetworkConfig(**TINY_DEEP)).state_dict(), str(start))
    run = tmp_path / "run"
    argv = ["--run-dir", str(run), "--data", str(data), "--cache", str(tmp_path / "cache"), "--phantoms", "0",
            "--weights", str(start), "--network", json.dumps(TINY_DEEP), "--crop", "16", "--unlabelled-crop", "16",
            "--unlabelled-phantoms", "0", "--unlabelled-real", "--mc-passes", "2", "--stage1-steps", "2",
            "--stage2-steps", "2", "--confidence", "0.0", "--uncertainty", "1.0"]
    assert main(argv) == 0
    record = json.loads((run / "run.json").read_text())
    stats = record["metrics"]["pseudo_labels"]
    assert np.isclose(sum(stats[0]["target_distribution"]), 1.0)
    assert [row["case"] for row in stats[1:]] == record["split"]["unlabelled_cases"]
    assert all(0.0 <= row["kept_fraction_of_brain"] <= 1.0 for row in stats[1:])
    assert set(record["outputs"]) == {"stage1_pseudo.safetensors", "stage2_consistency.safetensors",
                                      "stage2_teacher.safetensors"}
    stages = [json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert stages == ["pseudo"] * 2 + ["consistency"] * 2


def test_head_pseudo_labels_respect_thresholds_and_keep_real_labels():
    import torch

    from GliomaAnalysisLib.models.multitask import TASKS, MultiTaskConfig, pooled_dim
    from GliomaAnalysisLib.models.multitask_net import MultiTaskNet
    from GliomaAnalysisLib.models.network import NetworkConfig
    from training.advanced.semi_supervised_heads import pseudo_label

    torch.manual_seed(0)
    config = MultiTaskConfig(fused_features=16, hidden=8, backbone=NetworkConfig(
        widths=(4, 8, 8, 16), encoder_blocks=(1, 1, 1, 1), transformer_layers=1, transformer_heads=2).to_dict())
    model = MultiTaskNet(config)
    n = 12
    rows = {"pooled": torch.randn(n, pooled_dim(config)), "targets": torch.zeros(n, len(TASKS), 2),
            "known": torch.zeros(n, len(TASKS))}
    rows["targets"][:4, :, 1] = 1
    rows["known"][:4] = 1
    unlabelled = 1 - rows["known"]
    prior = {t: 0.5 for t in TASKS}
    everything, counts = pseudo_label(model, rows, unlabelled, prior, confidence=0.0, uncertainty=10.0)
    assert all(c == n - 4 for c in counts.values()) and torch.all(everything["known"] == 1)
    assert torch.allclose(everything["targets"][:4], rows["targets"][:4])  # labelled rows are untouched
    assert torch.allclose(everything["targets"].sum(dim=2), torch.ones(n, len(TASKS)))  # one-hot pseudo-labels
    nothing, counts = pseudo_label(model, rows, unlabelled, prior, confidence=1.0, uncertainty=10.0)
    assert sum(counts.values()) == 0 and torch.equal(nothing["known"], rows["known"])
    certain_only, counts = pseudo_label(model, rows, unlabelled, prior, confidence=0.0, uncertainty=0.0)
    assert sum(counts.values()) == 0  # no MC-dropout spread is below 0
