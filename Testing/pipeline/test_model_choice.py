"""A card's ``missing_modality_models``: a case without FLAIR is segmented by the model named for it; every other
case, and a named model that is absent or on another grid, by the requested one (with a warning)."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import analyze, load_case
from GliomaAnalysisLib.pipeline.model_choice import substitute_for
from GliomaAnalysisLib.pipeline.postprocess import decode_regions, lesion_filter, remove_small_components

SUBSTITUTE = "glioma_seg_without_flair"


def test_the_first_unseen_modality_the_card_names_decides():
    card = {"missing_modality_models": {"flair": "a", "t2": "b"}}
    assert substitute_for(card, ["flair"]) == ("flair", "a")
    assert substitute_for(card, ["flair", "t2"]) == ("t2", "b")  # MODALITIES order: t1, t1ce, t2, flair
    assert substitute_for(card, ["t1"]) is None and substitute_for(card, []) is None
    assert substitute_for({}, ["flair"]) is None


def _copy_with_second_model(folder, source, name, seed, version):
    """``source``'s models copied into ``folder`` beside a new tiny network ``name`` (glioma_seg's layout, weights
    drawn with ``seed``); returns (folder, glioma_seg's card to edit and write back)."""
    import torch

    from GliomaAnalysisLib.models.model_store import save_model
    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    for path in source.iterdir():
        shutil.copy(path, folder / path.name)
    card = json.loads((folder / "glioma_seg.json").read_text())
    torch.manual_seed(seed)
    save_model(GliomaSegNet(NetworkConfig.from_dict(card["network"])),
               {"version": version, "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}, folder, name)
    return folder, card


@pytest.fixture(scope="module")
def two_model_dir(tmp_path_factory, tiny_model_dir):
    """glioma_seg (the tiny test model) naming a second tiny model, other weights, for cases without FLAIR."""
    folder, card = _copy_with_second_model(tmp_path_factory.mktemp("two_models"), tiny_model_dir, SUBSTITUTE, 1, "0.9")
    card["missing_modality_models"] = {"flair": SUBSTITUTE}
    card["postprocessing"] = {"region_thresholds": [0.9, 0.5, 0.2], "min_et_ml": 0.0}
    (folder / "glioma_seg.json").write_text(json.dumps(card))
    substitute = json.loads((folder / f"{SUBSTITUTE}.json").read_text())
    substitute["postprocessing"] = {"region_thresholds": [0.5, 0.5, 0.2], "min_et_ml": 0.0,
                                    "missing_region_thresholds": {"flair": [0.05, 0.5, 0.2]}}
    (folder / f"{SUBSTITUTE}.json").write_text(json.dumps(substitute))
    return folder


def _probabilities(result):
    return np.stack([sitk.GetArrayFromImage(result.probabilities[k]) for k in ("ncr", "ed", "et")])


def test_a_case_without_flair_is_segmented_by_the_named_model(small_phantom, two_model_dir):
    without_flair = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2")})
    chosen = analyze(without_flair, model_dir=two_model_dir, fast=True, classify=False)
    direct = analyze(without_flair, model=SUBSTITUTE, model_dir=two_model_dir, fast=True, classify=False)
    assert chosen.models[0]["name"] == SUBSTITUTE and chosen.models[0]["version"] == "0.9"
    assert np.array_equal(_probabilities(chosen), _probabilities(direct))
    assert any(f"FLAIR missing: segmented by '{SUBSTITUTE}' 0.9" in w for w in chosen.warnings)
    # the substitute's own post-processing (its without-FLAIR thresholds), not the requested card's
    labels = sitk.GetArrayFromImage(chosen.labels)
    assert np.array_equal(labels, sitk.GetArrayFromImage(direct.labels))
    spacing = tuple(reversed(without_flair.geometry.spacing))
    by_requested_card = remove_small_components(
        lesion_filter(decode_regions(*_probabilities(chosen), (0.9, 0.5, 0.2)), spacing),
        without_flair.geometry.voxel_volume_ml)
    assert not np.array_equal(labels, by_requested_card)

    everything = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    primary = analyze(everything, model_dir=two_model_dir, fast=True, classify=False)
    assert primary.models[0]["name"] == "glioma_seg"
    assert not any("segmented by" in w for w in primary.warnings)
    kept = analyze(without_flair, model_dir=two_model_dir, fast=True, classify=False, single_model=True)
    assert kept.models[0]["name"] == "glioma_seg" and not any("segmented by" in w for w in kept.warnings)
    assert not np.array_equal(_probabilities(kept), _probabilities(chosen))


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
    assert any(f"'{SUBSTITUTE}' meant for cases without FLAIR could not be loaded" in w for w in absent.warnings)

    shutil.copy(two_model_dir / f"{SUBSTITUTE}.safetensors", tmp_path / f"{SUBSTITUTE}.safetensors")
    card_path = tmp_path / f"{SUBSTITUTE}.json"
    card = json.loads(card_path.read_text())
    card["preprocessing"]["spacing_mm"] = [1.5, 1.5, 1.5]
    card_path.write_text(json.dumps(card))
    other_grid = analyze(without_flair, model_dir=tmp_path, fast=True, classify=False)
    assert other_grid.models[0]["name"] == "glioma_seg" and np.array_equal(_probabilities(other_grid), expected)
    assert any("works on another grid" in w for w in other_grid.warnings)

    card.pop("network")
    card_path.write_text(json.dumps(card))
    invalid = analyze(without_flair, model_dir=tmp_path, fast=True, classify=False)
    assert invalid.models[0]["name"] == "glioma_seg" and np.array_equal(_probabilities(invalid), expected)
    assert any(f"the card of '{SUBSTITUTE}', meant for cases without FLAIR, is invalid" in w for w in invalid.warnings)


def test_the_command_line_hands_over_unless_told_single_model(tmp_path, phantom_dir, small_phantom, two_model_dir):
    import subprocess
    import sys

    files = {m: phantom_dir / f"{small_phantom.case_id}_{m}.nii.gz" for m in ("t1", "t1ce", "t2")}
    names = {}
    for flag in ([], ["--single-model"]):
        out = tmp_path / ("single" if flag else "handed")
        command = [sys.executable, "-m", "GliomaAnalysisLib.cli", "analyze", *[a for m, p in files.items()
                   for a in (f"--{m}", str(p))], "--out", str(out), "--model-dir", str(two_model_dir), "--fast",
                   "--no-classify", *flag]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        names[bool(flag)] = json.loads((out / "report.json").read_text())["models"][0]["name"]
    assert names == {False: SUBSTITUTE, True: "glioma_seg"}


FAST = "glioma_seg_fast"


@pytest.fixture(scope="module")
def fast_model_dir(tmp_path_factory, two_model_dir):
    """``two_model_dir`` with a third tiny model, other weights, named in glioma_seg's card as its ``fast_model``."""
    folder, card = _copy_with_second_model(tmp_path_factory.mktemp("fast_models"), two_model_dir, FAST, 2, "0.3")
    card["fast_model"] = FAST
    (folder / "glioma_seg.json").write_text(json.dumps(card))
    return folder


def test_fast_mode_is_segmented_by_the_cards_fast_model(small_phantom, fast_model_dir):
    from GliomaAnalysisLib.pipeline.model_choice import fast_model_name

    assert fast_model_name("glioma_seg", str(fast_model_dir)) == FAST
    assert fast_model_name(SUBSTITUTE, str(fast_model_dir)) == SUBSTITUTE  # its card names none
    assert fast_model_name("absent", str(fast_model_dir)) == "absent"
    everything = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    fast = analyze(everything, model_dir=fast_model_dir, fast=True, classify=False)
    direct = analyze(everything, model=FAST, model_dir=fast_model_dir, fast=True, classify=False)
    assert fast.models[0]["name"] == FAST and fast.models[0]["version"] == "0.3"
    assert np.array_equal(_probabilities(fast), _probabilities(direct))
    assert not any("segmented" in w for w in fast.warnings)
    assert any(f"segmenting with '{FAST}'" in line for line in fast.log)

    quality = analyze(everything, model_dir=fast_model_dir, fast=False, classify=False)
    single = analyze(everything, model_dir=fast_model_dir, fast=True, classify=False, single_model=True)
    assert quality.models[0]["name"] == "glioma_seg" and single.models[0]["name"] == "glioma_seg"
    assert not np.array_equal(_probabilities(single), _probabilities(fast))
    # a case without FLAIR goes to the model trained for it, fast or not
    without_flair = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2")})
    assert analyze(without_flair, model_dir=fast_model_dir, fast=True, classify=False).models[0]["name"] == SUBSTITUTE


def test_an_unusable_fast_model_leaves_the_requested_one_in_charge(small_phantom, fast_model_dir, tmp_path):
    for path in fast_model_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    everything = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    expected = _probabilities(analyze(everything, model_dir=tmp_path, fast=True, classify=False, single_model=True))
    (tmp_path / f"{FAST}.safetensors").unlink()
    absent = analyze(everything, model_dir=tmp_path, fast=True, classify=False)
    assert absent.models[0]["name"] == "glioma_seg" and np.array_equal(_probabilities(absent), expected)
    assert any(f"fast mode; the model '{FAST}' meant for --fast could not be loaded" in w for w in absent.warnings)
