"""Shared pieces of the fine-tuning stages (adaptation, semi-supervised): start weights, batches, schedule, logs."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

from GliomaAnalysisLib.models.network import GliomaSegNet

from .datasets import BRATS18, DEFAULT_CACHE
from ..segmentation.segmentation_data import TrainingCase, load_split, sample_crop


def start_model(weights: Optional[str] = None, model_dir: Optional[str] = None, name: str = "glioma_seg",
                network: str = "{}") -> GliomaSegNet:
    """The shipped model (default), a model folder with a card, or raw safetensors weights; in training mode."""
    from ..segmentation.modality_eval import load_segmentation_model

    model = load_segmentation_model(weights, model_dir, name, network)
    model.train()
    return model


def sample_batch(real: Sequence[TrainingCase], synthetic: Sequence[TrainingCase], rng: np.random.Generator,
                 batch: int, crop: int, modality_dropout: float = 0.0, phantom_probability: float = 0.15,
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` augmented crops: image (B, 4, S, S, S) float32, labels (B, S, S, S) int64, presence (B, 4)."""
    items = []
    for _ in range(batch):
        pool = synthetic if synthetic and rng.random() < phantom_probability else real
        items.append(sample_crop(pool[rng.integers(len(pool))], crop, rng, modality_dropout))
    x = torch.from_numpy(np.stack([i[0] for i in items]))
    y = torch.from_numpy(np.stack([i[1] for i in items]).astype(np.int64))
    presence = torch.from_numpy(np.stack([i[2] for i in items]))
    return x, y, presence


def random_subsets(batch: int, rng: np.random.Generator, proper: bool = True) -> np.ndarray:
    """Presence masks (B, 4) float32 of uniformly drawn non-empty modality subsets (``proper``: never all four)."""
    choices = [m for m in range(1, 16) if not (proper and m == 15)]
    codes = rng.choice(choices, size=batch)
    return np.array([[(c >> bit) & 1 for bit in range(4)] for c in codes], dtype=np.float32)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 10) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, warmup: int = 10) -> None:
    """Each parameter group follows ``cosine_lr`` from its own ``peak_lr``."""
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(step, total, group["peak_lr"], warmup)


def save_weights(model: torch.nn.Module, path: "str | os.PathLike[str]") -> Path:
    """float32 safetensors of ``model``'s state dict, written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return path


class JsonLog:
    """Append-only JSON-lines log (one record per step) with a wall clock."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        self.started = time.perf_counter()
        self.records: List[Dict] = []

    def write(self, **record) -> Dict:
        record["seconds"] = round(time.perf_counter() - self.started, 1)
        self.records.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record


def prepare_stage(args) -> Tuple[Path, List[TrainingCase], List[TrainingCase]]:
    """Threads and seed from ``args``, the run folder (created), and the (train, validation) cases of the fixed
    split on the 2 mm grid with ``args.phantoms`` synthetic training cases."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    train_cases, validation = load_split(Path(args.data), Path(args.cache), (2.0, 2.0, 2.0), args.phantoms)
    return run, train_cases, validation


def add_stage_arguments(parser) -> None:
    """The options every fine-tuning stage takes first: run folder, data and cache, start weights."""
    parser.add_argument("--run-dir", required=True, help="outputs (outside the repository)")
    parser.add_argument("--data", default=str(BRATS18))
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--weights", default=None, help="start weights (default: the shipped model)")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--name", default="glioma_seg")
    parser.add_argument("--network", default="{}", help="JSON NetworkConfig overrides for --weights")
