import json

import pytest
import torch

from GliomaAnalysisLib.model_store import ModelError, load_model, model_paths, save_model
from GliomaAnalysisLib.network import GliomaSegNet, NetworkConfig

TINY = NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, transformer_heads=2)


@pytest.fixture()
def stored(tmp_path):
    torch.manual_seed(0)
    model = GliomaSegNet(TINY)
    save_model(model, {"version": "test", "preprocessing": {"spacing_mm": [2, 2, 2]}}, tmp_path, "tiny")
    return model, tmp_path


def test_round_trip_gives_identical_weights_and_a_complete_card(stored):
    model, folder = stored
    loaded, card = load_model("tiny", folder)
    assert card["name"] == "tiny" and len(card["sha256"]) == 64 and card["network"]["widths"] == [4, 8]
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), k  # stored as float16
        assert b.dtype == a.dtype
    assert not loaded.training


def test_changed_weights_are_refused(stored):
    _, folder = stored
    weights, _ = model_paths("tiny", folder)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the model card of 'tiny'"):
        load_model("tiny", folder)


def test_truncated_or_missing_files_are_refused(stored):
    _, folder = stored
    weights, card = model_paths("tiny", folder)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="tiny"):
        load_model("tiny", folder)
    weights.unlink()
    with pytest.raises(ModelError, match="weights of model 'tiny' not found"):
        load_model("tiny", folder)
    card.unlink()
    with pytest.raises(ModelError, match="model card of 'tiny' not found"):
        load_model("tiny", folder)


def test_card_that_does_not_fit_the_weights_is_refused(stored):
    _, folder = stored
    _, card_path = model_paths("tiny", folder)
    card = json.loads(card_path.read_text())
    card["network"]["widths"] = [8, 16]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit"):
        load_model("tiny", folder)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", ".hidden"])
def test_unsafe_model_names_are_refused(name):
    with pytest.raises(ModelError, match="invalid model name"):
        model_paths(name)

