import json

import pytest
import torch

from GliomaAnalysisLib.models.model_store import ModelError, load_model, model_paths, save_model
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

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



class _Response:
    def __init__(self, data: bytes):
        import io
        self._stream = io.BytesIO(data)

    def read(self, n=-1):
        return self._stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _served(folder, name):
    weights, card = model_paths(name, folder)
    files = {"https://models.example/card.json": card.read_bytes(),
             "https://models.example/w.safetensors": weights.read_bytes()}
    return files, lambda url: _Response(files[url])


def test_download_checks_the_sha256_and_installs_atomically(stored, tmp_path, monkeypatch):
    model, folder = stored
    files, opener = _served(folder, "tiny")
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    from GliomaAnalysisLib.models.model_store import download_model
    card = download_model("tiny", "https://models.example/card.json", "https://models.example/w.safetensors",
                          opener=opener)
    assert card.parent == tmp_path / "cache"
    loaded, _ = load_model("tiny")  # found in the user cache
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny.json", "tiny.safetensors"]
    files["https://models.example/w.safetensors"] = files["https://models.example/w.safetensors"][:-10] + b"x" * 10
    with pytest.raises(ModelError, match="do not match the sha256"):
        download_model("tiny2", "https://models.example/card.json", "https://models.example/w.safetensors",
                       opener=opener)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny.json", "tiny.safetensors"]


@pytest.mark.parametrize("url", ["http://models.example/card.json", "file:///etc/passwd", "ftp://x/y"])
def test_download_refuses_anything_but_https(url, tmp_path):
    from GliomaAnalysisLib.models.model_store import download_model
    with pytest.raises(ModelError, match="only https"):
        download_model("tiny", url, "https://models.example/w.safetensors", folder=tmp_path)
    with pytest.raises(ModelError, match="invalid model name"):
        download_model("../../etc/x", "https://a/b.json", "https://a/b.safetensors", folder=tmp_path)
