"""Model weights: safetensors files with a JSON model card; loading verifies the card's sha256 and never unpickles."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from .errors import GliomaAnalysisError
from .network import GliomaSegNet, NetworkConfig

RESOURCES = Path(__file__).resolve().parent.parent / "Resources" / "models"
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


def model_paths(name: str, folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Tuple[Path, Path]:
    """(weights, card) paths of model ``name`` in ``folder`` (default: the bundled Resources/models)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ModelError(f"{name}: invalid model name (letters, digits, '_', '-', '.' only; no path separators)")
    root = Path(folder) if folder is not None else RESOURCES
    return root / f"{name}.safetensors", root / f"{name}.json"


def save_model(model: GliomaSegNet, card: Dict, folder: Union[str, "os.PathLike[str]"], name: str) -> Path:
    """Write ``name.safetensors`` and ``name.json`` (the card, completed with config and sha256) atomically."""
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
    fd, tmp_card = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=weights.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(card, handle, indent=2)
        handle.write("\n")
    for path in (tmp, tmp_card):
        os.chmod(path, 0o644)
    os.replace(tmp, weights)
    os.replace(tmp_card, card_path)
    return card_path


def load_card(name: str = DEFAULT_SEGMENTATION_MODEL, folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Dict:
    _, card_path = model_paths(name, folder)
    if not card_path.is_file():
        raise ModelError(f"{card_path}: model card of '{name}' not found")
    try:
        return json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card_path}: unreadable model card ({exc})") from None


def load_model(name: str = DEFAULT_SEGMENTATION_MODEL,
               folder: Optional[Union[str, "os.PathLike[str]"]] = None) -> Tuple[GliomaSegNet, Dict]:
    """Build the network from the card and load its weights after checking their sha256; returns (model, card)."""
    card = load_card(name, folder)
    weights, _ = model_paths(name, folder)
    if not weights.is_file():
        raise ModelError(f"{weights}: weights of model '{name}' not found")
    actual = sha256_of(weights)
    if actual != card.get("sha256"):
        raise ModelError(f"{weights}: sha256 {actual[:12]}... does not match the model card of '{name}' "
                         f"({str(card.get('sha256'))[:12]}...): corrupt or replaced file")
    try:
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
        model = GliomaSegNet(NetworkConfig.from_dict(card["network"]))
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{weights}: weights do not fit model '{name}' ({str(exc).splitlines()[0][:160]})") from None
    model.eval()
    return model, card


def load_state(model: torch.nn.Module, path: Union[str, "os.PathLike[str]"]) -> None:
    """Load raw safetensors weights into ``model`` (training checkpoints)."""
    model.load_state_dict(load_file(str(path)))
