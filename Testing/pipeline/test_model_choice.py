"""A card's ``missing_modality_models``: a case without FLAIR is segmented by the model named for it; every other
case, and a named model that is absent or on another grid, by the requested one (with a warning)."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import analyze, load_case
from GliomaAnalysisLib.pipeline.model_choice import substitute_for

SUBSTITUTE = "glioma_seg_without_flair"


def test_the_first_unseen_modality_the_card_names_decides():
    card = {"missing_modality_models": {"flair": "a", "t2": "b"}}
    assert substitute_for(card, ["flair"]) == ("flair", "a")
    assert substitute_for(card, ["flair", "t2"]) == ("t2", "b")  # MODALITIES order: t1, t1ce, t2, flair
    assert substitute_for(card, ["t1"]) is None and substitute_for(card, []) is None
    assert substitute_for({}, ["flair"]) is None


@pytest.fixture(scope="module")
def two_model_dir(tmp_path_factory, tiny_model_dir):
    """glioma_seg (the tiny test model) naming a second tiny model, other weights, for cases without FLAIR."""
    import torch

    from GliomaAnalysisLib.models.model_store import save_model
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    folder = tmp_path_factory.mktemp("two_models")
    for path in tiny_model_dir.iterdir():
        shutil.copy(path, folder / path.name)
    card = json.loads((folder / "glioma_seg.json").read_text())
    torch.manual_seed(1)
    save_model(GliomaSegNet(NetworkConfig.from_dict(card["network"])),
               {"version": "0.9", "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}, folder, SUBSTITUTE)
    card["missing_modality_models"] = {"flair": SUBSTITUTE}
    (folder / "glioma_seg.json").write_text(json.dumps(card))
    return folder


def _probabilities(result):
    return np.stack([sitk.GetArrayFromImage(result.probabilities[k]) for k in ("ncr", "ed", "et")])


def test_a_case_without_flair_is_segmented_by_the_named_model(small_phantom, two_model_dir):
    without_flair = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2")})
    chosen = analyze(without_flair, model_dir=two_model_dir, fast=True, classify=False)
    direct = analyze(without_flair, model=SUBSTITUTE, model_dir=two_model_dir, fast=True, classify=False)
    assert chosen.models[0]["name"] == SUBSTITUTE and chosen.models[0]["version"] == "0.9"
    assert np.array_equal(_probabilities(chosen), _probabilities(direct))
    assert any(f"segmented by '{SUBSTITUTE}' 0.9" in w for w in chosen.warnings)

    everything = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    primary = analyze(everything, model_dir=two_model_dir, fast=True, classify=False)
    assert primary.models[0]["name"] == "glioma_seg"
    assert not any("segmented by" in w for w in primary.warnings)


def test_an_absent_or_other_grid_model_leaves_the_requested_one_in_charge(small_phantom, two_model_dir, tmp_path):
    for path in two_model_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    without_flair = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2")})
    plain_card = json.loads((tmp_path / "glioma_seg.json").read_text())
    plain_card.pop("missing_modality_models")
    (tmp_path / "plain").mkdir()
    shutil.copy(tmp_path / "glioma_seg.safetensors", tmp_path / "plain" / "glioma_seg.safetensors")
    (tmp_path / "plain" / "glioma_seg.json").write_text(json.dumps(plain_card))
    expected = _probabilities(analyze(without_flair, model_dir=tmp_path / "plain", fast=True, classify=False))
    substitute = analyze(without_flair, model_dir=tmp_path, fast=True, classify=False)
    assert not np.array_equal(_probabilities(substitute), expected)  # the two models really differ

    (tmp_path / f"{SUBSTITUTE}.safetensors").unlink()
    absent = analyze(without_flair, model_dir=tmp_path, fast=True, classify=False)
    assert absent.models[0]["name"] == "glioma_seg" and np.array_equal(_probabilities(absent), expected)
    assert any(f"'{SUBSTITUTE}' meant for such cases could not be loaded" in w for w in absent.warnings)

    shutil.copy(two_model_dir / f"{SUBSTITUTE}.safetensors", tmp_path / f"{SUBSTITUTE}.safetensors")
    card_path = tmp_path / f"{SUBSTITUTE}.json"
    card = json.loads(card_path.read_text())
    card["preprocessing"]["spacing_mm"] = [1.5, 1.5, 1.5]
    card_path.write_text(json.dumps(card))
    other_grid = analyze(without_flair, model_dir=tmp_path, fast=True, classify=False)
    assert other_grid.models[0]["name"] == "glioma_seg" and np.array_equal(_probabilities(other_grid), expected)
    assert any("works on another grid" in w for w in other_grid.warnings)
