import dataclasses

import numpy as np
import pytest
import torch

from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

TINY = NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1, transformer_heads=2)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return GliomaSegNet(TINY).eval()


@pytest.mark.parametrize("present", [(1, 0, 0, 0), (0, 1, 0, 1), (1, 1, 1, 0), (1, 1, 1, 1)])
def test_any_subset_of_modalities_runs_and_gives_class_logits(net, present):
    x = torch.randn(2, 4, 16, 24, 8)
    out = net(x, torch.tensor([present, present], dtype=torch.float32))
    assert out.shape == (2, 4, 16, 24, 8) and torch.isfinite(out).all()


def test_absent_channels_are_ignored(net):
    x = torch.randn(1, 4, 16, 16, 16)
    presence = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    changed = x.clone()
    changed[:, 1] = 100.0
    changed[:, 3] = torch.randn(16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x, presence), net(changed, presence))


def test_concat_fusion_ignores_absent_channels_and_knows_which_are_present():
    torch.manual_seed(0)
    net = GliomaSegNet(dataclasses.replace(TINY, fusion="concat")).eval()
    with torch.no_grad():
        net.stem.presence_film.bias.normal_()  # trained values are non-zero; zero-initialised it would hide the test
        net.stem.presence_film.weight.normal_()
        x = torch.randn(1, 4, 16, 16, 16)
        presence = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
        changed = x.clone()
        changed[:, 2] = 50.0
        assert torch.allclose(net(x, presence), net(changed, presence))
        x[:, 2] = 0.0  # the same zeroed input, told that T2 is present: the output differs
        assert not torch.allclose(net(x, presence), net(x, torch.ones(1, 4)), atol=1e-4)


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="fusion"):
        NetworkConfig(fusion="late")


def test_fusion_weights_are_learnable_and_renormalised(net):
    stem = net.stem
    assert stem.weight_logits.requires_grad
    x = torch.randn(1, 4, 8, 8, 8)
    single = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():  # with one modality present its stem output passes with weight 1
        assert torch.allclose(stem(x, single), stem.stems[1](x[:, 1:2]), atol=1e-6)


def test_t1ce_difference_stem_reads_t1ce_minus_t1_only_when_both_are_present():
    import torch.nn.functional as F

    torch.manual_seed(0)
    stem = GliomaSegNet(dataclasses.replace(TINY, t1ce_difference=True)).stem
    with torch.no_grad():
        stem.weight_logits.copy_(torch.tensor([0.1, 0.5, -0.3, 0.2, 1.0]))
        x = torch.randn(2, 4, 8, 8, 8)
        weights = F.softplus(stem.weight_logits)
        parts = [stem.stems[m](x[:, m:m + 1]) for m in range(4)] + [stem.difference_stem(x[:, 1:2] - x[:, 0:1])]
        expected = sum(w * part for w, part in zip(weights, parts)) / weights.sum()
        assert torch.allclose(stem(x, torch.ones(2, 4)), expected, atol=1e-5)
        without_t1 = torch.tensor([[0.0, 1.0, 1.0, 1.0]] * 2)  # no difference: the three stems present, renormalised
        expected = sum(weights[m] * parts[m] for m in (1, 2, 3)) / weights[1:4].sum()
        assert torch.allclose(stem(x, without_t1), expected, atol=1e-5)
        changed = x.clone()
        changed[:, 0] = 9.0  # an absent T1 changes nothing, through its stem or the difference
        assert torch.equal(stem(changed, without_t1), stem(x, without_t1))
    plain = GliomaSegNet(TINY).state_dict()  # the shipped layout is unchanged without the option
    assert not any(k.startswith("stem.difference_stem") for k in plain) and plain["stem.weight_logits"].shape == (4,)
    with pytest.raises(ValueError, match="t1ce_difference needs fusion 'average'"):
        NetworkConfig(fusion="concat", t1ce_difference=True)
    assert NetworkConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "t1ce_difference"}) == TINY


def test_sizes_must_be_divisible(net):
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 4, 10, 16, 16), torch.ones(1, 4))


def test_mc_dropout_samples_differ_while_eval_is_deterministic():
    from GliomaAnalysisLib.models.segment import dropout_masks

    torch.manual_seed(1)
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                     transformer_heads=2, dropout=0.3))
    x, p = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4)
    net.eval()
    rng = np.random.default_rng(0)

    def sampled():
        return net(x, p, [torch.from_numpy(m) for m in dropout_masks(net.config, (16, 16, 16), rng)])

    with torch.no_grad():
        assert torch.equal(net(x, p), net(x, p))
        assert not torch.equal(sampled(), sampled())
        ones = [torch.from_numpy(m) for m in dropout_masks(net.config, (16, 16, 16), None)]
        assert torch.allclose(net(x, p, ones), net(x, p), atol=1e-5)  # all-ones masks: the eval-mode network


def test_config_round_trips_through_a_dict():
    assert NetworkConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError):
        NetworkConfig(widths=(8, 16), encoder_blocks=(1,))


def test_the_written_out_transformer_layers_compute_what_torch_layers_compute():
    torch.manual_seed(2)
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=2,
                                     transformer_heads=4, dropout=0.2)).eval()
    x = torch.randn(2, 16, 3, 4, 5)
    with torch.no_grad():
        ours = net.transformer(x)
        tokens = (x + net.transformer.position(x)).flatten(2).transpose(1, 2)
        reference = net.transformer.norm(net.transformer.encoder(tokens)).transpose(1, 2).reshape(x.shape) + x
    assert torch.allclose(ours, reference, atol=1e-5)
