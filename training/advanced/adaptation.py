"""Adaptation module for missing modalities (seed 001, section III.E), starting from the shipped weights.

    python -m training.advanced.adaptation --run-dir /root/glioma-runs/adapted [--config training/configs/adaptation.yaml]

Three stages, each written to the run folder (``--resume`` skips a stage whose weights exist):

1. Knowledge self-distillation (``stage1_distill.safetensors``): the same network runs a full-modality pathway
   (teacher, dropout off, features detached) and a pathway with a random non-empty proper subset of the modalities
   (student) on the same crop; loss = segmentation loss of both pathways + ``distill_weight`` x MSE between their
   feature maps at the first encoder stage, the last encoder stage (bottleneck after the transformer) and the first
   decoder block (deep supervision), read through forward hooks (the state dict is unchanged).
2. SimSiam (``stage2_simsiam.safetensors``): the modalities of a crop are split at random into two non-empty
   groups; both views go through the shared encoder, global average pooling of every encoder level, a projector of
   three linear layers and a predictor; loss = symmetric negative cosine between each predictor output and the
   other view's projection with stop-gradient. LayerNorm instead of BatchNorm in the projector (batches of 2).
3. Supervised fine-tuning with the encoder (stems, encoder, down-sampling, transformer) frozen
   (``adapted.safetensors``): decoder and head only, segmentation loss, modality dropout.

``python -m training.segmentation.modality_eval --weights RUN/adapted.safetensors`` measures the 15 modality combinations.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from GliomaAnalysisLib.models.network import GliomaSegNet

from ..common.config import parse_args
from ..common.losses import dice_ce_loss
from ..common.run_record import finish_run_record, start_run_record
from ..segmentation.segmentation_data import TrainingCase
from ..common.stages import (JsonLog, add_stage_arguments, prepare_stage, random_subsets, sample_batch, save_weights,
                     set_lr, start_model)

FEATURE_POINTS = ("encoder.0", "transformer", "decoder.0")
"""Submodules whose outputs are distilled: first encoder stage, last encoder stage, first decoder block."""
ENCODER_PREFIXES = ("stem.", "encoder.", "down.", "transformer.")
"""State-dict prefixes of the encoder (frozen in stage 3)."""


class FeatureTap:
    """Forward hooks that keep the latest output of each named submodule (``with FeatureTap(model) as tap``).

    Nothing is added to the model: the state dict and ``forward`` are unchanged, the hooks go at exit.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] = FEATURE_POINTS) -> None:
        self.model = model
        self.names = tuple(names)
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles: List = []

    def __enter__(self) -> "FeatureTap":
        for name in self.names:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._keeper(name)))
        return self

    def _keeper(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return hook

    def features(self) -> List[torch.Tensor]:
        """The captured outputs in ``names`` order (from the latest forward pass)."""
        return [self.outputs[name] for name in self.names]

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextlib.contextmanager
def dropout_disabled(model: nn.Module) -> Iterator[None]:
    """Dropout layers in eval mode inside the block, restored after."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout3d)) and m.training]
    for layer in layers:
        layer.eval()
    try:
        yield
    finally:
        for layer in layers:
            layer.train()


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of the MSE (mean over elements, eq. 10) between teacher features (detached: the teacher is
    a target) and student features of the same shapes."""
    if len(teacher) != len(student) or not teacher:
        raise ValueError("teacher and student need the same, non-zero number of feature maps")
    return torch.stack([F.mse_loss(s, t.detach()) for t, s in zip(teacher, student)]).mean()


def self_distillation_loss(model: GliomaSegNet, x: torch.Tensor, labels: torch.Tensor, partial: torch.Tensor,
                           weight: float = 1.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Stage-1 loss on one batch: x (B, 4, S, S, S) with every modality, labels (B, S, S, S), partial (B, 4).

    Teacher: all modalities, dropout off; student: the ``partial`` modalities (others zeroed). Returns
    (seg_full + seg_partial + weight * feature MSE, the parts as floats).
    """
    full = torch.ones_like(partial)
    with FeatureTap(model) as tap:
        with dropout_disabled(model):
            logits_full = model(x, full)
        teacher = [f.detach() for f in tap.features()]
        logits_partial = model(x * partial[:, :, None, None, None], partial)
        student = tap.features()
    seg_full = dice_ce_loss(logits_full, labels)
    seg_partial = dice_ce_loss(logits_partial, labels)
    kd = distillation_loss(teacher, student)
    total = seg_full + seg_partial + weight * kd
    return total, {"seg_full": seg_full.item(), "seg_partial": seg_partial.item(), "distill": kd.item()}


class SimSiamHead(nn.Module):
    """Projector (three linear layers) and predictor (bottleneck MLP) of SimSiam on pooled encoder features."""

    def __init__(self, in_features: int, dim: int = 128, predictor_dim: int = 32) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(in_features, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.predictor = nn.Sequential(nn.Linear(dim, predictor_dim), nn.LayerNorm(predictor_dim),
                                       nn.ReLU(inplace=True), nn.Linear(predictor_dim, dim))

    def forward(self, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """pooled (B, in_features) -> (projection z (B, dim), prediction p (B, dim))."""
        z = self.projector(pooled)
        return z, self.predictor(z)


def pooled_encoder_features(model: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Global average pooling of every encoder level, concatenated: (B, sum(widths))."""
    return torch.cat([level.mean(dim=(2, 3, 4)) for level in model.encode(x, presence)], dim=1)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch: -1 for identical directions."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric loss (eq. 11): (D(p1, z2) + D(p2, z1)) / 2; no gradient flows through z1 or z2."""
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


def modality_split(batch: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two presence masks (B, 4) per crop: a random split of the four modalities into two non-empty groups."""
    first = np.zeros((batch, 4), dtype=np.float32)
    for row in range(batch):
        code = int(rng.integers(1, 15))  # 1..14: neither empty nor all four
        first[row] = [(code >> bit) & 1 for bit in range(4)]
    return first, 1.0 - first


def simsiam_step_loss(model: GliomaSegNet, head: SimSiamHead, x: torch.Tensor, view1: torch.Tensor,
                      view2: torch.Tensor) -> torch.Tensor:
    """Stage-2 loss of one batch x (B, 4, S, S, S) seen through the modality groups view1 / view2 (B, 4)."""
    h1 = pooled_encoder_features(model, x * view1[:, :, None, None, None], view1)
    h2 = pooled_encoder_features(model, x * view2[:, :, None, None, None], view2)
    (z1, p1), (z2, p2) = head(h1), head(h2)
    return simsiam_loss(p1, p2, z1, z2)


def freeze_encoder(model: GliomaSegNet) -> List[str]:
    """requires_grad False for the encoder's parameters; returns the names of those still trained."""
    trained = []
    for name, parameter in model.named_parameters():
        frozen = name.startswith(ENCODER_PREFIXES)
        parameter.requires_grad_(not frozen)
        if not frozen:
            trained.append(name)
    return trained


def _optimizer(groups: Sequence[Tuple[Sequence[nn.Parameter], float]]) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": list(p), "lr": lr, "peak_lr": lr} for p, lr in groups], weight_decay=1e-5)


def run_distillation(model: GliomaSegNet, real: List[TrainingCase], synthetic: List[TrainingCase],
                     args: argparse.Namespace, log: JsonLog) -> None:
    """Stage 1 for ``args.distill_steps`` steps."""
    rng = np.random.default_rng([args.seed, 1])
    optimizer = _optimizer([(model.parameters(), args.distill_lr)])
    model.train()
    for step in range(args.distill_steps):
        set_lr(optimizer, step, args.distill_steps)
        x, y, _ = sample_batch(real, synthetic, rng, args.distill_batch, args.crop, 0.0, args.phantom_probability)
        partial = torch.from_numpy(random_subsets(len(x), rng))
        loss, parts = self_distillation_loss(model, x, y, partial, args.distill_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        log.write(stage="distill", step=step + 1, loss=round(loss.item(), 5),
                  **{k: round(v, 5) for k, v in parts.items()})


def run_simsiam(model: GliomaSegNet, real: List[TrainingCase], synthetic: List[TrainingCase],
                args: argparse.Namespace, log: JsonLog) -> SimSiamHead:
    """Stage 2 for ``args.simsiam_steps`` steps; the encoder learns slowly, the new head fast."""
    rng = np.random.default_rng([args.seed, 2])
    head = SimSiamHead(sum(model.config.widths))
    encoder = [p for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIXES)]
    optimizer = _optimizer([(encoder, args.simsiam_encoder_lr), (head.parameters(), args.simsiam_lr)])
    model.train()
    for step in range(args.simsiam_steps):
        set_lr(optimizer, step, args.simsiam_steps)
        x, _, _ = sample_batch(real, synthetic, rng, args.simsiam_batch, args.crop, 0.0, args.phantom_probability)
        view1, view2 = (torch.from_numpy(v) for v in modality_split(len(x), rng))
        loss = simsiam_step_loss(model, head, x, view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder + list(head.parameters()), 12.0)
        optimizer.step()
        log.write(stage="simsiam", step=step + 1, loss=round(loss.item(), 5))
    return head


def run_finetune(model: GliomaSegNet, real: List[TrainingCase], synthetic: List[TrainingCase],
                 args: argparse.Namespace, log: JsonLog) -> None:
    """Stage 3: decoder and head only, segmentation loss with modality dropout."""
    rng = np.random.default_rng([args.seed, 3])
    trained = freeze_encoder(model)
    parameters = [p for n, p in model.named_parameters() if n in set(trained)]
    optimizer = _optimizer([(parameters, args.finetune_lr)])
    model.train()
    for step in range(args.finetune_steps):
        set_lr(optimizer, step, args.finetune_steps)
        x, y, presence = sample_batch(real, synthetic, rng, args.finetune_batch, args.crop,
                                      args.finetune_modality_dropout, args.phantom_probability)
        loss = dice_ce_loss(model(x, presence), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 12.0)
        optimizer.step()
        log.write(stage="finetune", step=step + 1, loss=round(loss.item(), 5))
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def build_parser() -> argparse.ArgumentParser:
    """Options (also the keys of ``training/configs/adaptation.yaml``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser)
    parser.add_argument("--phantoms", type=int, default=8)
    parser.add_argument("--phantom-probability", type=float, default=0.15)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--distill-batch", type=int, default=1)
    parser.add_argument("--distill-lr", type=float, default=2e-4)
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the feature MSE")
    parser.add_argument("--simsiam-steps", type=int, default=30)
    parser.add_argument("--simsiam-batch", type=int, default=2)
    parser.add_argument("--simsiam-lr", type=float, default=1e-3, help="projector / predictor")
    parser.add_argument("--simsiam-encoder-lr", type=float, default=5e-5)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--finetune-batch", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=2e-4)
    parser.add_argument("--finetune-modality-dropout", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="skip the stages whose weights already exist")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    started = time.perf_counter()
    run, train_cases, validation = prepare_stage(args)
    real = [c for c in train_cases if not c.synthetic]
    synthetic = [c for c in train_cases if c.synthetic]
    if not real:
        print(f"error: no labelled cases found under {args.data}", file=sys.stderr)
        return 2
    start_run_record(run, {"args": vars(args)}, {"train_cases": [c.case_id for c in train_cases],
                                                 "validation_cases": [c.case_id for c in validation]},
                     args.seed, "cpu", "training.advanced.adaptation", config_file=args.config)
    model = start_model(args.weights, args.model_dir, args.name, args.network)
    log = JsonLog(run / "log.jsonl")
    stages = (("stage1_distill", args.distill_steps, run_distillation),
              ("stage2_simsiam", args.simsiam_steps, run_simsiam),
              ("adapted", args.finetune_steps, run_finetune))
    outputs = []
    for name, steps, stage in stages:
        path = run / f"{name}.safetensors"
        if args.resume and path.is_file():
            from GliomaAnalysisLib.models.model_store import load_state
            load_state(model, path)
            print(f"{name}: resumed from {path}", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            if steps > 0:
                stage(model, real, synthetic, args, log)
            save_weights(model, path)
            print(f"{name}: {steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        outputs.append(path)
    losses = {stage: [r["loss"] for r in log.records if r["stage"] == stage] for stage in
              ("distill", "simsiam", "finetune")}
    metrics = {f"{stage}_loss_first_last": [v[0], v[-1]] if v else None for stage, v in losses.items()}
    finish_run_record(run, metrics, outputs, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
