"""Adaptation module: distillation and SimSiam losses, stop-gradient, feature taps, frozen encoder, a full run."""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.advanced.adaptation import (ENCODER_PREFIXES, FeatureTap, SimSiamHead, distillation_loss, freeze_encoder,
                                 main, modality_split, negative_cosine, self_distillation_loss, simsiam_loss)
from training.common.losses import dice_ce_loss

TINY = {"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2}


def tiny_model(dropout: float = 0.1) -> GliomaSegNet:
    torch.manual_seed(0)
    return GliomaSegNet(NetworkConfig(**TINY, dropout=dropout))


def test_negative_cosine_is_minus_one_for_identical_and_plus_one_for_opposite_vectors():
    v = torch.randn(5, 16)
    assert torch.allclose(negative_cosine(v, v.clone()), torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(negative_cosine(v, -v), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(negative_cosine(v, 3.0 * v), torch.tensor(-1.0), atol=1e-6)  # direction, not size
    assert torch.allclose(simsiam_loss(v, v, v.clone(), v.clone()), torch.tensor(-1.0), atol=1e-6)


def test_stop_gradient_really_stops_the_gradient_through_the_projections():
    torch.manual_seed(1)
    head = SimSiamHead(12, dim=16, predictor_dim=4)
    h1, h2 = torch.randn(3, 12, requires_grad=True), torch.randn(3, 12, requires_grad=True)
    (z1, p1), (z2, p2) = head(h1), head(h2)
    grad = torch.autograd.grad(simsiam_loss(p1, p2, z1, z2), h1)[0]
    # h1 may only receive gradient through its prediction p1 (against the constant z2), never through z1
    (_, p1b), (z2b, _) = head(h1), head(h2)
    only_prediction = torch.autograd.grad(0.5 * negative_cosine(p1b, z2b), h1)[0]
    assert torch.allclose(grad, only_prediction, atol=1e-7)
    # the same loss without stop-gradient would send gradient through z1 as well: the test can tell the difference
    (z1c, p1c), (z2c, p2c) = head(h1), head(h2)
    no_stop = -0.5 * (F.cosine_similarity(p1c, z2c).mean() + F.cosine_similarity(p2c, z1c).mean())
    assert not torch.allclose(torch.autograd.grad(no_stop, h1)[0], grad, atol=1e-7)
    # a projection used only as a target gets no gradient at all
    z = torch.randn(3, 16, requires_grad=True)
    negative_cosine(torch.randn(3, 16, requires_grad=True), z).backward()
    assert z.grad is None


def test_distillation_loss_is_zero_when_the_pathways_are_equal_and_stops_gradient_into_the_teacher():
    features = [torch.randn(2, 4, 8, 8, 8), torch.randn(2, 8, 2, 2, 2)]
    assert distillation_loss(features, [f.clone() for f in features]).item() == 0.0
    teacher = [f.clone().requires_grad_(True) for f in features]
    student = [(f + 1.0).requires_grad_(True) for f in features]
    loss = distillation_loss(teacher, student)
    assert torch.allclose(loss, torch.tensor(1.0))  # MSE of a constant offset of 1
    loss.backward()
    assert all(t.grad is None for t in teacher) and all(s.grad is not None for s in student)

    model = tiny_model().eval()  # no dropout: the full and the "partial" pathway with all four modalities agree
    x = torch.randn(1, 4, 16, 16, 16)
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    _, parts = self_distillation_loss(model, x, labels, torch.ones(1, 4))
    assert parts["distill"] == 0.0 and abs(parts["seg_full"] - parts["seg_partial"]) < 1e-6
    _, parts = self_distillation_loss(model, x, labels, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert parts["distill"] > 0.0


def test_feature_tap_reads_three_levels_and_leaves_the_model_unchanged():
    model = tiny_model()
    keys = list(model.state_dict())
    reference = model.eval()(torch.ones(1, 4, 16, 16, 16), torch.ones(1, 4))
    with FeatureTap(model) as tap:
        out = model(torch.ones(1, 4, 16, 16, 16), torch.ones(1, 4))
        shapes = [tuple(f.shape) for f in tap.features()]
    assert shapes == [(1, 4, 16, 16, 16), (1, 8, 8, 8, 8), (1, 4, 16, 16, 16)]
    assert torch.equal(out, reference) and list(model.state_dict()) == keys
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_frozen_encoder_gets_no_gradient_and_the_decoder_does():
    model = tiny_model()
    trained = freeze_encoder(model)
    assert trained and not any(n.startswith(ENCODER_PREFIXES) for n in trained)
    loss = dice_ce_loss(model(torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4)), torch.ones(1, 16, 16, 16).long())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == name.startswith(ENCODER_PREFIXES), name


def test_modality_split_gives_two_complementary_non_empty_groups():
    first, second = modality_split(200, np.random.default_rng(0))
    assert np.all(first + second == 1) and np.all(first.sum(1) >= 1) and np.all(second.sum(1) >= 1)
    assert len({tuple(r) for r in first}) == 14


def test_adaptation_run_writes_stages_and_run_record(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 2, seed=3, size=(64, 64, 48), spacing=(3.0, 3.0, 3.0))
    start = tmp_path / "start.safetensors"
    from safetensors.torch import save_file
    save_file(tiny_model().state_dict(), str(start))
    run = tmp_path / "run"
    code = main(["--run-dir", str(run), "--data", str(data), "--cache", str(tmp_path / "cache"), "--phantoms", "0",
                 "--weights", str(start), "--network", json.dumps(TINY), "--crop", "16", "--distill-steps", "2",
                 "--simsiam-steps", "2", "--finetune-steps", "2"])
    assert code == 0
    first, adapted = load_file(str(start)), load_file(str(run / "adapted.safetensors"))
    assert first.keys() == adapted.keys()
    assert any(not torch.equal(first[k], adapted[k]) for k in first)
    simsiam = load_file(str(run / "stage2_simsiam.safetensors"))
    for key in first:  # stage 3 trains the decoder only: the encoder leaves it as SimSiam left it
        if key.startswith(ENCODER_PREFIXES):
            assert torch.equal(simsiam[key], adapted[key]), key
    record = json.loads((run / "run.json").read_text())
    assert record["script"] == "training.advanced.adaptation" and record["seed"] == 0
    assert record["config"]["args"]["distill_steps"] == 2 and len(record["split"]["train_cases"]) == 2
    assert set(record["outputs"]) == {"stage1_distill.safetensors", "stage2_simsiam.safetensors",
                                      "adapted.safetensors"}
    assert record["metrics"]["distill_loss_first_last"] is not None and record["finished"]
    stages = [json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert stages == ["distill"] * 2 + ["simsiam"] * 2 + ["finetune"] * 2
