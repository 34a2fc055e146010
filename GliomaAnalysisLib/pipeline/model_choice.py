"""Which segmentation model segments a case: the requested one, or the model its card names for cases whose network
input lacks a modality.

A card may set ``missing_modality_models``, e.g. ``{"flair": "glioma_seg_without_flair"}``: a case the network would
see without FLAIR is then segmented by that model (from the same model folder), one trained and cross-validated for
that case (modality dropout that drops FLAIR far more often), while every other case keeps the requested model.
With several modalities unseen, the first of them in ``MODALITIES`` order that the card names decides (so a case
without T2 and FLAIR goes to the FLAIR model: without FLAIR the requested model under-calls edema whatever else is
missing; the pairs themselves were not cross-validated).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..io.modalities import MODALITIES
from ..models.model_store import ModelError, load_verified_card
from ..models.network_config import NetworkConfig


def substitute_for(card: Dict, unseen: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(modality, model name) for the first modality of ``unseen`` (in ``MODALITIES`` order) that ``card``'s
    ``missing_modality_models`` names, or None."""
    table = card.get("missing_modality_models") or {}
    for modality in MODALITIES:
        if modality in unseen and table.get(modality):
            return modality, str(table[modality])
    return None


def choose_segmentation_model(model: str, card: Dict, model_folder: Optional[str],
                              unseen: Sequence[str]) -> Tuple[str, Dict, List[str]]:
    """(model name, its verified card, warnings) of the model that segments a case whose network input lacks the
    modalities ``unseen``: ``model`` itself (``card``) unless its card names another for one of them. A named model
    that cannot be loaded, or that works on another grid, leaves ``model`` in charge with a warning saying so."""
    found = substitute_for(card, unseen)
    if found is None:
        return model, card, []
    modality, name = found
    missing = " and ".join(m.upper() for m in MODALITIES if m in unseen)
    try:
        substitute = load_verified_card(name, model_folder)
        same_grid = working_grid(substitute) == working_grid(card)
    except ModelError as exc:
        return model, card, [f"{missing} missing; the model '{name}' meant for cases without {modality.upper()} "
                             f"could not be loaded ({exc}), so '{model}' segmented the case"]
    except (KeyError, TypeError, ValueError) as exc:
        return model, card, [f"{missing} missing; the card of '{name}', meant for cases without {modality.upper()}, "
                             f"is invalid ({type(exc).__name__}: {exc}), so '{model}' segmented the case"]
    if not same_grid:
        return model, card, [f"{missing} missing; the model '{name}' meant for cases without {modality.upper()} works "
                             f"on another grid than '{model}', so '{model}' segmented the case"]
    version = f" {substitute['version']}" if substitute.get("version") else ""
    return name, substitute, [f"{missing} missing: segmented by '{name}'{version}, the model trained for cases "
                              f"without {modality.upper()}"]


def working_grid(card: Dict) -> Tuple[List[float], int]:
    """(voxel spacing in mm, multiple the padded grid must be of) that preprocessing takes from ``card``: two models
    with the same grid can take each other's preprocessed case."""
    return [float(v) for v in card["preprocessing"]["spacing_mm"]], NetworkConfig.from_dict(card["network"]).divisor
