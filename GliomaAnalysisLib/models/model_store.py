"""Model weights: safetensors files with a JSON model card; loading verifies the card's sha256 and never unpickles."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple, Union

from ..errors import GliomaAnalysisError

if TYPE_CHECKING:  # torch is imported only to build a network: a run from cached ONNX graphs never needs it
    import torch

    from .network import GliomaSegNet

RESOURCES = Path(__file__).resolve().parents[2] / "Resources" / "models"
DEFAULT_SEGMENTATION_MODEL = "glioma_seg"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelError(GliomaAnalysisError):
    """A model is missing, corrupt, or its weights do not match its model card."""


def sha256_of(path: Union[str, "os.PathLike[str]"]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def user_cache() -> Path:
    """Where downloaded models live: $GLIOMA_ANALYSIS_CACHE, else ~/.cache/glioma-analysis/models."""
    return Path(os.environ.get("GLIOMA_ANALYSIS_CACHE", Path.home() / ".cache" / "glioma-analysis" / "models"))


def model_paths(name: str, folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Tuple[Path, Path]:
    """(weights, card) paths of model ``name`` in ``folder``; by default the bundled Resources/models, else the
    user cache when the model was downloaded there."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ModelError(f"{name}: invalid model name (letters, digits, '_', '-', '.' only; no path separators)")
    if folder is not None:
        root = Path(folder)
    else:
        root = RESOURCES if (RESOURCES / f"{name}.json").is_file() or not (user_cache() / f"{name}.json").is_file() \
            else user_cache()
    return root / f"{name}.safetensors", root / f"{name}.json"


def download_model(name: str, card_url: str, weights_url: str, folder: Optional[Union[str, "os.PathLike[str]"]] = None,
                   opener: Callable = None) -> Path:
    """Install model ``name`` from https URLs into the user cache (or ``folder``); returns the card path.

    The card is fetched first; the weights stream into a temporary file beside the target, their sha256 is checked
    against the card, and only then are both renamed into place. Nothing is left behind on failure.
    """
    for url in (card_url, weights_url):
        if urllib.parse.urlparse(url).scheme != "https":
            raise ModelError(f"{url}: only https URLs are allowed for model downloads")
    opener = opener or (lambda url: urllib.request.urlopen(url, timeout=60))
    target = Path(folder) if folder is not None else user_cache()
    weights, card_path = model_paths(name, target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with opener(card_url) as response:
            card = json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card_url}: cannot fetch the model card of '{name}' ({exc})") from None
    if not re.fullmatch(r"[0-9a-f]{64}", str(card.get("sha256", ""))):
        raise ModelError(f"{card_url}: the model card of '{name}' has no valid sha256")
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".safetensors", dir=target)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle, opener(weights_url) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != card["sha256"]:
            raise ModelError(f"{weights_url}: downloaded weights of '{name}' do not match the sha256 of its card")
        card_tmp = Path(tmp).with_suffix(".json")
        card_tmp.write_text(json.dumps(card, indent=2))
        os.replace(tmp, weights)
        os.replace(card_tmp, card_path)
    except OSError as exc:
        raise ModelError(f"{weights_url}: download of '{name}' failed ({exc})") from None
    finally:
        for leftover in (Path(tmp), Path(tmp).with_suffix(".json")):
            if leftover.exists():
                leftover.unlink()
    return card_path


def save_model(model: "torch.nn.Module", card: Dict, folder: Union[str, "os.PathLike[str]"], name: str) -> Path:
    """Write ``name.safetensors`` and ``name.json`` (the card, completed with ``model.config.to_dict()`` and sha256)
    atomically."""
    from safetensors.torch import save_file

    weights, card_path = model_paths(name, folder)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # float16 on disk halves the file (6 MB instead of 12); loading casts back to float32.
    tensors = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=weights.parent)
    os.close(fd)
    save_file(tensors, tmp)
    card = dict(card, name=name, network=model.config.to_dict(), weights_file=weights.name,
                weights_dtype="float16", sha256=sha256_of(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, weights)
    write_card(card, card_path)
    return card_path


def write_card(card: Dict, path: Union[str, "os.PathLike[str]"]) -> Path:
    """Write a model card (JSON, indent 2) to ``path`` atomically: a reader never sees half a card."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(card, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def load_card(name: str = DEFAULT_SEGMENTATION_MODEL, folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Dict:
    _, card_path = model_paths(name, folder)
    if not card_path.is_file():
        raise ModelError(f"{card_path}: model card of '{name}' not found")
    try:
        return json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card_path}: unreadable model card ({exc})") from None


def load_verified_card(name: str = DEFAULT_SEGMENTATION_MODEL,
                       folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Dict:
    """The model card of ``name`` after checking that its weights file exists and has the card's sha256."""
    card = load_card(name, folder)
    weights, _ = model_paths(name, folder)
    if not weights.is_file():
        raise ModelError(f"{weights}: weights of model '{name}' not found")
    actual = sha256_of(weights)
    if actual != card.get("sha256"):
        raise ModelError(f"{weights}: sha256 {actual[:12]}... does not match the model card of '{name}' "
                         f"({str(card.get('sha256'))[:12]}...): corrupt or replaced file")
    return card


def _build_segmentation_net(card: Dict) -> "GliomaSegNet":
    from .network import GliomaSegNet, NetworkConfig

    return GliomaSegNet(NetworkConfig.from_dict(card["network"]))


def load_model(name: str = DEFAULT_SEGMENTATION_MODEL,
               folder: Optional[Union[str, "os.PathLike[str]"]] = None,
               build: Callable[[Dict], "torch.nn.Module"] = _build_segmentation_net) -> Tuple["torch.nn.Module", Dict]:
    """Build the network from the card (``build(card)``, the segmentation network by default) and load its weights
    after checking their sha256; returns (model in eval mode, card)."""
    from safetensors.torch import load_file

    card = load_verified_card(name, folder)
    weights, _ = model_paths(name, folder)
    try:
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
        model = build(card)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{weights}: weights do not fit model '{name}' ({str(exc).splitlines()[0][:160]})") from None
    model.eval()
    return model, card


def load_state(model: "torch.nn.Module", path: Union[str, "os.PathLike[str]"]) -> None:
    """Load raw safetensors weights into ``model`` (training checkpoints)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


load_model_cached = lru_cache(maxsize=8)(load_model)
""":func:`load_model` remembering the last 8 (name, folder, build) it loaded, for repeated analyses in one process.
Call ``load_model_cached.cache_clear()`` after replacing a model's files."""
