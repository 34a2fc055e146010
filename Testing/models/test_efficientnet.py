"""models/efficientnet.py against MONAI's EfficientNet it ports: same module names, same seeded init, same outputs,
for the configurations the shipped MGMT and slice-grade cards use; and building those models does not import MONAI."""
from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict

import pytest
import torch
from safetensors.torch import load_file

from GliomaAnalysisLib.models.efficientnet import B0_BLOCKS, EfficientNet, BlockArgs, round_filters
from GliomaAnalysisLib.models.mgmt_fusion import _NORMS, MGMTFusionConfig
from GliomaAnalysisLib.models.model_store import RESOURCES, load_card
from GliomaAnalysisLib.models.slice_grade import SliceGradeConfig

monai_nets = pytest.importorskip("monai.networks.nets")


def _mgmt_kwargs(backbone_norm: str = None) -> Dict[str, Any]:
    """EfficientNet arguments of SliceSequenceClassifier for the shipped MGMT card (optionally another norm)."""
    config = MGMTFusionConfig.from_dict(load_card("mgmt_fusion")["network"])
    return dict(in_channels=3, num_classes=config.feature_dim, width_coefficient=config.width_coefficient,
                depth_coefficient=config.depth_coefficient, dropout_rate=0.0, image_size=config.crop_size,
                norm=_NORMS[backbone_norm or config.backbone_norm], drop_connect_rate=config.drop_connect)


def _slice_grade_kwargs() -> Dict[str, Any]:
    """EfficientNet arguments of slice_grade._EfficientNetFeatures for the shipped card's settings (the shipped model
    uses the small CNN; these are the settings its ``backbone="efficientnet"`` option would use)."""
    config = SliceGradeConfig.from_dict(load_card("slice_grade")["network"])
    return dict(in_channels=3, num_classes=1, width_coefficient=config.efficientnet_width,
                depth_coefficient=config.efficientnet_depth, dropout_rate=0.0, image_size=config.crop)


CONFIGS = {"mgmt_card": lambda: _mgmt_kwargs(), "mgmt_instance": lambda: _mgmt_kwargs("instance"),
           "mgmt_batch": lambda: _mgmt_kwargs("batch"), "slice_grade_card": _slice_grade_kwargs}


def _pair(kwargs: Dict[str, Any], seed: int = 0):
    torch.manual_seed(seed)
    theirs = monai_nets.EfficientNet(list(B0_BLOCKS), spatial_dims=2, **kwargs)
    torch.manual_seed(seed)
    ours = EfficientNet(B0_BLOCKS, **kwargs)
    return theirs, ours


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_modules_init_and_outputs_as_monai(name):
    kwargs = CONFIGS[name]()
    theirs, ours = _pair(kwargs)
    assert [(n, type(m).__name__) for n, m in ours.named_modules()] == \
        [(n, type(m).__name__) for n, m in theirs.named_modules()]
    pads = {n: m.padding for n, m in theirs.named_modules() if isinstance(m, torch.nn.ConstantPad2d)}
    assert pads and pads == {n: m.padding for n, m in ours.named_modules() if isinstance(m, torch.nn.ConstantPad2d)}
    a, b = theirs.state_dict(), ours.state_dict()
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]
    assert all(torch.equal(a[k], b[k]) for k in a), "seeded init differs from MONAI's"

    # distinct weights everywhere (norm affines, running statistics) so the comparison exercises them
    generator = torch.Generator().manual_seed(1)
    state = {k: (v + 0.1 * torch.rand(v.shape, generator=generator)) if v.is_floating_point() else v
             for k, v in a.items()}
    theirs.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(6, 3, kwargs["image_size"], kwargs["image_size"], generator=generator)
    with torch.no_grad():
        expected, actual = theirs.eval()(x), ours.eval()(x)
        assert actual.shape == expected.shape == (6, kwargs["num_classes"])
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
        torch.manual_seed(5)  # training mode: batch statistics and the same drop-connect draws
        expected = theirs.train()(x)
        torch.manual_seed(5)
        torch.testing.assert_close(ours.train()(x), expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(not (RESOURCES / "mgmt_fusion.safetensors").is_file(), reason="no shipped mgmt_fusion model")
def test_shipped_mgmt_backbone_weights_give_monai_outputs():
    """The trained weights of one modality's backbone: strict load into both, same features."""
    prefix = "models.flair.backbone."
    state = {k[len(prefix):]: v.float() for k, v in load_file(str(RESOURCES / "mgmt_fusion.safetensors")).items()
             if k.startswith(prefix)}
    theirs, ours = _pair(_mgmt_kwargs())
    theirs.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-5, rtol=0)


def test_block_strings_and_rounding_as_monai():
    from monai.networks.nets.efficientnet import BlockArgs as MonaiBlockArgs
    from monai.networks.nets.efficientnet import _round_filters

    for block in B0_BLOCKS + ("r1_k3_s22_e6_i16_o24_se0.25_noskip", "r2_k5_s1_e1_i8_o8"):
        assert tuple(BlockArgs.from_string(block)) == tuple(MonaiBlockArgs.from_string(block))
    for filters in (16, 24, 32, 40, 80, 112, 192, 320, 1280):
        for width in (0.25, 0.35, 0.5, 1.0, 1.1):
            assert round_filters(filters, width) == _round_filters(filters, width, 8)


def test_building_the_shipped_classifiers_does_not_import_monai():
    code = ("import sys\n"
            "from GliomaAnalysisLib.pipeline.classify import CLASSIFIERS\n"
            "from GliomaAnalysisLib.models.model_store import RESOURCES, load_model\n"
            "from GliomaAnalysisLib.models.slice_grade import SliceGradeConfig\n"
            "from GliomaAnalysisLib.models.slice_grade_net import SliceGradeNet\n"
            "for c in CLASSIFIERS:\n"
            "    if (RESOURCES / f'{c.model}.json').is_file():\n"
            "        load_model(c.model, None, c.build)\n"
            "SliceGradeNet(SliceGradeConfig(backbone='efficientnet'))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'monai'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
