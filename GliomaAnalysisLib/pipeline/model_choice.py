"""Which segmentation model segments a case: the requested one, the model its card names for cases whose network
input lacks a modality, or the lighter model its card names for ``--fast``.

A card may set ``missing_modality_models``, e.g. ``{"flair": "glioma_seg_without_flair"}``: a case the network would
see without FLAIR is then segmented by that model (from the same model folder), one trained and cross-validated for
that case (modality dropout that drops FLAIR far more often), while every other case keeps the requested model.
With several modalities unseen, the first of them in ``MODALITIES`` order that the card names decides (so a case
without T2 and FLAIR goes to the FLAIR model: without FLAIR the requested model under-calls edema whatever else is
missing; the pairs themselves were not cross-validated).

A card may also set ``fast_model``, e.g. ``"glioma_seg_fast"``: ``analyze --fast`` then segments a case that no
``missing_modality_models`` entry claims with that model (a narrower network, cross-validated on its own card), for
speed at the accuracy its card states.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from ..io.modalities import MODALITIES
from ..models.model_store import ModelError, load_verified_card, model_paths
from ..models.network_config import NetworkConfig


def substitute_for(card: Dict, unseen: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(modality, model name) for the first modality of ``unseen`` (in ``MODALITIES`` order) that ``card``'s
    ``missing_modality_models`` names, or None."""
    table = card.get("missing_modality_models") or {}
    for modality in MODALITIES:
        if modality in unseen and table.get(modality):
            return modality, str(table[modality])
    return None


def choose_segmentation_model(model: str, card: Dict, model_folder: Optional[str], unseen: Sequence[str],
                              fast: bool = False) -> Tuple[str, Dict, List[str]]:
    """(model name, its verified card, warnings) of the model that segments a case whose network input lacks the
    modalities ``unseen``: the model ``card`` names for one of them; else, with ``fast``, its ``fast_model``; else
    ``model`` itself (``card``). A named model that cannot be loaded, or that works on another grid, leaves ``model``
    in charge with a warning saying so."""
    found = substitute_for(card, unseen)
    if found is not None:
        modality, name = found
        missing = " and ".join(m.upper() for m in MODALITIES if m in unseen)
        purpose, context = f"meant for cases without {modality.upper()}", f"{missing} missing"
    elif fast and card.get("fast_model"):
        name, purpose, context = str(card["fast_model"]), "meant for --fast", "fast mode"
    else:
        return model, card, []
    try:
        named = load_verified_card(name, model_folder)
        same_grid = working_grid(named) == working_grid(card)
    except ModelError as exc:
        return model, card, [f"{context}; the model '{name}' {purpose} could not be loaded ({exc}), so '{model}' "
                             f"segmented the case"]
    except (KeyError, TypeError, ValueError) as exc:
        return model, card, [f"{context}; the card of '{name}', {purpose}, is invalid ({type(exc).__name__}: {exc}), "
                             f"so '{model}' segmented the case"]
    if not same_grid:
        return model, card, [f"{context}; the model '{name}' {purpose} works on another grid than '{model}', so "
                             f"'{model}' segmented the case"]
    if found is None:
        return name, named, []  # the report names the model; --fast asked for speed, nothing to warn about
    version = f" {named['version']}" if named.get("version") else ""
    return name, named, [f"{context}: segmented by '{name}'{version}, the model trained for cases without "
                         f"{found[0].upper()}"]


def fast_model_name(model: str, model_folder: Optional[str]) -> str:
    """The model ``analyze --fast`` segments a case with all modalities by: the ``fast_model`` that ``model``'s card
    names, else ``model`` (read without verifying the weights: only to preload the right network)."""
    try:
        _, card_path = model_paths(model, model_folder)
        return str(json.loads(card_path.read_text()).get("fast_model") or model)
    except (ModelError, OSError, ValueError, AttributeError):
        return model


def working_grid(card: Dict) -> Tuple[List[float], int]:
    """(voxel spacing in mm, multiple the padded grid must be of) that preprocessing takes from ``card``: two models
    with the same grid can take each other's preprocessed case."""
    return [float(v) for v in card["preprocessing"]["spacing_mm"]], NetworkConfig.from_dict(card["network"]).divisor
