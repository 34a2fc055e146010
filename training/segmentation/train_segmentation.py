"""Train the segmentation network on the real cases (one cross-validation fold, or all) with checkpoints and resume.

    python -m training.segmentation.train_segmentation --run-dir runs/seg/fold0 --fold 0 [--resume]
    python -m training.segmentation.train_segmentation --run-dir runs/seg/all --fold all   # the shipped model
    python -m training.segmentation.train_segmentation --config training/configs/segmentation.yaml --run-dir RUN
    torchrun --nproc_per_node 2 -m training.segmentation.train_segmentation --run-dir RUN ...   # data parallel (gloo / nccl)

Writes into --run-dir: run.json (configuration, git commit and dirty flag, split, seed, versions, device; final
metrics at the end), config.json, log.jsonl (loss per step, validation Dice every --val-every steps),
checkpoint.pt (model + optimizer + step, written atomically every --checkpoint-every steps) and, at the end,
final.safetensors. ``python -m training.segmentation.export_segmentation`` turns a run into shipped weights + model card.
Under torchrun every process trains on its own crops (``--batch`` each), gradients are averaged by
DistributedDataParallel and only rank 0 writes. Mixed precision: float16 on CUDA (``--no-amp``: off); bfloat16 on a
CPU with bfloat16 instructions only with ``--cpu-bf16`` (1.7x faster a step here; the CUDA runs train in float16).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from GliomaAnalysisLib.models.inference import predict
from GliomaAnalysisLib.io.labels import regions
from GliomaAnalysisLib.pipeline.measures import dice
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from GliomaAnalysisLib.models.network_config import T1, T1CE
from GliomaAnalysisLib.io.modalities import MODALITIES

from ..common.config import parse_args
from ..common.distributed import PrecisionError, autocast, grad_scaler, mixed_precision, setup, wrap
from ..common.datasets import DEFAULT_CACHE, REAL_DATA_ROOTS
from ..common.folds import assign_folds, read_case_infos
from ..common.losses import REGIONS, segmentation_loss
from ..common.run_record import finish_run_record, git_commit, start_run_record
from .augmentation import AugmentationConfig
from .crop_stream import CropSettings, batches
from .segmentation_data import FOREGROUND_PROBABILITY, TrainingCase, load_cases

def validation_dice(model: GliomaSegNet, cases: List[TrainingCase], device: torch.device = torch.device("cpu"),
                    presence: Optional[np.ndarray] = None) -> Dict[str, Dict[str, float]]:
    """Dice (WT, TC, ET) of each case of ``cases`` on the working grid with the modalities of ``presence`` (4,)
    (default all), argmax of one plain pass on ``device`` (the device the model trains on): {case id: {region: Dice}}."""
    presence = np.ones(4, dtype=np.float32) if presence is None else np.asarray(presence, dtype=np.float32)
    scores = {}
    for case in cases:
        shape = case.labels.shape
        pad = [(0, 0)] + [(0, (-n) % model.config.divisor) for n in shape]
        probabilities, _, _ = predict(model, np.pad(case.image, pad), presence, device)
        prediction = regions(probabilities[:, :shape[0], :shape[1], :shape[2]].argmax(0))
        truth = regions(case.labels)
        scores[case.case_id] = {name: round(dice(prediction[name], truth[name]), 4) for name in REGIONS}
    model.train()
    return scores


def mean_dice(scores: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """{region: mean over the cases} of :func:`validation_dice`'s scores."""
    return {k: float(np.mean([s[k] for s in scores.values()])) for k in REGIONS}


def training_model(config: NetworkConfig, device: torch.device, precision: Optional[torch.dtype], lr: float
                   ) -> Tuple[GliomaSegNet, torch.optim.Optimizer]:
    """The network on ``device`` (channels-last 3D for bfloat16 on the CPU: oneDNN's fast layout) and its AdamW."""
    model = GliomaSegNet(config).to(device)
    if _channels_last(device, precision):
        model = model.to(memory_format=torch.channels_last_3d)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)


def training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler",
                  x: torch.Tensor, soft: torch.Tensor, presence: torch.Tensor, precision: Optional[torch.dtype],
                  dice_weight: float, dice_regions: Tuple[str, ...]) -> torch.Tensor:
    """One optimisation step on x (B, 4, S, S, S), soft targets (B, 4, S, S, S) and presence (B, 4): forward under
    ``precision``'s autocast, the loss in float32, backward, gradients clipped to norm 12, the optimizer's step.
    Returns the loss. ``network`` may be the DDP wrapper of the optimised model."""
    if _channels_last(x.device, precision):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with autocast(x.device, precision):
        logits = network(x, presence)
    loss = segmentation_loss(logits.float(), soft, presence[:, T1CE], dice_weight, dice_regions=dice_regions)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
    scaler.step(optimizer)
    scaler.update()
    return loss


def _channels_last(device: torch.device, precision: Optional[torch.dtype]) -> bool:
    return precision == torch.bfloat16 and device.type == "cpu"


def learning_rate(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def dice_regions(text: str) -> Tuple[str, ...]:
    """--dice-regions: a comma-separated subset of wt, tc, et."""
    regions = tuple(r.strip().lower() for r in text.split(",") if r.strip())
    if not regions or any(r not in REGIONS for r in regions):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated subset of {', '.join(REGIONS)}")
    return regions


def network_config(text: str) -> NetworkConfig:
    """--network's JSON overrides applied to the default NetworkConfig; a bad value ends in one error line."""
    try:
        return NetworkConfig.from_dict({**NetworkConfig().to_dict(), **json.loads(text)})
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise SystemExit(f"error: --network {text!r}: {exc}") from None


def drop_one_weights(text: str) -> tuple:
    """'1,1,1,2' -> (1.0, 1.0, 1.0, 2.0): four non-negative odds with a positive sum."""
    weights = tuple(float(v) for v in str(text).split(","))
    if len(weights) != 4 or min(weights) < 0 or sum(weights) <= 0:
        raise SystemExit(f"error: --drop-one-weights {text!r}: give four non-negative numbers (t1,t1ce,t2,flair)")
    return weights


def absent_modalities(text: Optional[str]) -> Tuple[bool, bool, bool, bool]:
    """--absent-modalities 'flair' -> (False, False, False, True): modalities the crops never show; at least one stays."""
    names = [n.strip().lower() for n in str(text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or len(set(names)) >= len(MODALITIES):
        raise SystemExit(f"error: --absent-modalities {text!r}: give some (not all) of {','.join(MODALITIES)}")
    return tuple(m in names for m in MODALITIES)


def crop_settings(args: argparse.Namespace, rank: int) -> CropSettings:
    """The training batches of ``args`` (batch, crop, foreground share, augmentation, seed) for process ``rank``."""
    augmentation = AugmentationConfig(keep_all_probability=args.keep_all_probability,
                                      drop_one_weights=drop_one_weights(args.drop_one_weights),
                                      absent=absent_modalities(args.absent_modalities))
    return CropSettings(args.batch, args.crop, args.foreground_probability, augmentation, args.seed, rank)


def init_weights_path(args: argparse.Namespace) -> str:
    """--init-weights with '{fold}' filled in; a missing file is a one-line error."""
    path = str(args.init_weights).replace("{fold}", str(args.fold))
    if not Path(path).is_file():
        raise SystemExit(f"error: --init-weights {path}: no such file")
    return path


RESUMABLE_CHANGES = frozenset({"run_dir", "resume", "steps", "workers", "threads", "device", "amp", "cpu_bf16",
                               "val_every",
                               "checkpoint_every", "cache", "data", "config"})
"""Options a resumed run may change: how it is carried out (and how long), not what it trains."""


def check_resume(args: argparse.Namespace) -> None:
    """--resume of a run whose checkpoint was trained under other options is a one-line error naming them: it would
    otherwise go on (or, finished, stay) under a config.json that does not describe its weights."""
    run = Path(args.run_dir)
    if not (args.resume and (run / "checkpoint.pt").is_file() and (run / "config.json").is_file()):
        return
    stored = json.loads((run / "config.json").read_text()).get("args", {})
    current = json.loads(json.dumps(vars(args)))  # as config.json holds them (tuples as lists)
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and k in stored and stored[k] != current[k])
    if changed:
        options = ", ".join(f"--{k.replace('_', '-')} {stored[k]!r} -> {current[k]!r}" for k in changed)
        raise SystemExit(f"error: {run}: --resume of a run trained with other options ({options}); "
                         "use a new --run-dir")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also the keys of ``training/configs/segmentation.yaml``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS, help="data roots (case folders with _seg files)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--fold", default="all", help="validation fold 0..n-1 of the stratified folds, or 'all'")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--foreground-probability", type=float, default=FOREGROUND_PROBABILITY,
                        help="share of crops centred on a tumor voxel (the rest anywhere)")
    parser.add_argument("--dice-weight", type=float, default=0.5, help="weight of the region Dice next to CE")
    parser.add_argument("--dice-regions", default="wt,tc,et", type=dice_regions,
                        help="regions the Dice term scores, e.g. tc,et (the small ones CE alone learns slowly)")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=2, help="crops per step and process")
    parser.add_argument("--crop", type=int, default=64, help="crop edge in working-grid voxels")
    parser.add_argument("--spacing", type=float, default=2.0, help="working-grid spacing in mm")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--keep-all-probability", type=float, default=0.5,
                        help="modality dropout: share of crops with every modality (then 0.3 one missing, else a subset)")
    parser.add_argument("--drop-one-weights", default="1,1,1,1",
                        help="modality dropout: relative odds of each modality (t1,t1ce,t2,flair) being the one missing")
    parser.add_argument("--absent-modalities", default=None,
                        help="comma-separated modalities (t1,t1ce,t2,flair) no crop shows and validation leaves out: "
                             "a model for cases without them, e.g. flair")
    parser.add_argument("--init-weights", default=None,
                        help="start from these weights (safetensors; '{fold}' is replaced by the fold) instead of "
                             "random ones: a warm restart with a new learning-rate cycle")
    parser.add_argument("--val-every", type=int, default=150)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes drawing the augmented crops (0: this one); the same batches for any number")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--network", default="{}", help="JSON overrides of NetworkConfig")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available (one GPU per torchrun process), else the CPU")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="float16 mixed precision on CUDA (ignored on the CPU)")
    parser.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=False,
                        help="bfloat16 mixed precision on a CPU with bfloat16 instructions (AVX512-BF16, AMX); "
                             "refused on others, where it is emulated (ignored on CUDA)")
    return parser


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    return 0 if train(args) is not None else 2


def train(args: argparse.Namespace) -> Optional[GliomaSegNet]:
    """Run the training loop of ``args`` (in every torchrun process); returns the trained network (None when no
    labelled case was found). Only rank 0 writes the run folder."""
    init_path = init_weights_path(args) if args.init_weights else None
    check_resume(args)
    context = setup(args.device)
    try:
        precision = mixed_precision(context.device, args.amp, args.cpu_bf16)
    except PrecisionError as error:
        print(f"error: {error}", file=sys.stderr)
        context.close()
        return None
    settings = crop_settings(args, context.rank)  # checks --drop-one-weights before anything is written
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = context.device.type == "cuda"  # every crop has one shape: tune convolutions once
    wall_start = time.perf_counter()
    config = network_config(args.network)  # before the run folder exists: a bad value leaves nothing behind
    if config.t1ce_difference and (settings.augmentation.absent[T1] or settings.augmentation.absent[T1CE]):
        print("error: --network t1ce_difference needs T1 and T1CE in the crops (--absent-modalities leaves one out): "
              "its stem would never train", file=sys.stderr)
        context.close()
        return None
    run = Path(args.run_dir)
    spacing = (args.spacing,) * 3
    if not context.is_main:
        context.barrier()  # rank 0 fills the cache first (preprocessed arrays)
    cases = load_cases([Path(d) for d in args.data], Path(args.cache), spacing)
    if context.is_main:
        context.barrier()
    if not cases:
        print(f"error: no labelled cases found under {', '.join(args.data)}", file=sys.stderr)
        context.close()
        return None
    if context.is_main:  # only now: a run that cannot start leaves no folder behind
        run.mkdir(parents=True, exist_ok=True)
    folds = assign_folds(read_case_infos(args.data, [c.case_id for c in cases]), args.n_folds, args.fold_seed)
    if args.fold == "all":
        real, validation = cases, []
    else:
        fold = int(args.fold)
        real = [c for c in cases if folds[c.case_id] != fold]
        validation = [c for c in cases if folds[c.case_id] == fold]
    split = {"train_cases": [c.case_id for c in real], "validation_cases": [c.case_id for c in validation]}
    if context.is_main:
        (run / "config.json").write_text(json.dumps({
            "args": vars(args), "network": config.to_dict(), "git_commit": git_commit(), **split,
            "folds": folds, "world_size": context.world_size}, indent=2))
        start_run_record(run, {"args": vars(args), "network": config.to_dict()}, split, args.seed, context.device,
                         "training.segmentation.train_segmentation", context.world_size, getattr(args, "config", None))

    torch.manual_seed(args.seed)
    model, optimizer = training_model(config, context.device, precision, args.lr)
    scaler = grad_scaler(precision)
    step = 0
    checkpoint = run / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True, map_location=context.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if context.is_main:
            print(f"resumed at step {step}", file=sys.stderr)
    elif init_path:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(init_path))
    network = wrap(model, context)
    if context.rank:
        torch.manual_seed(args.seed + context.rank)  # dropout masks differ between ranks; rank 0 as one process

    log = None
    elapsed_before = 0.0
    if context.is_main:
        log_path = run / "log.jsonl"
        previous = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
            if log_path.is_file() else []
        previous = [r for r in previous if r["step"] <= step]  # drop entries after the checkpoint we resume from
        log_path.write_text("".join(json.dumps(r) + "\n" for r in previous))
        elapsed_before = previous[-1]["seconds"] if previous else 0.0
        log = open(log_path, "a")
    network.train()
    shown = 1.0 - np.asarray(settings.augmentation.absent, dtype=np.float32)  # validation's modalities
    started = time.perf_counter()
    last: Dict = {}
    for image, targets, presence_array in batches(real, settings, step, args.steps, args.workers):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = training_step(network, optimizer, scaler, torch.from_numpy(image).to(context.device),
                             torch.from_numpy(targets).to(context.device),
                             torch.from_numpy(presence_array).to(context.device), precision, args.dice_weight,
                             args.dice_regions)
        step += 1
        mean_loss = context.mean(loss.item())
        record = {"step": step, "loss": round(mean_loss, 5), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(elapsed_before + time.perf_counter() - started, 1)}
        if validation and (step % args.val_every == 0 or step == args.steps):
            if context.is_main:
                scores = validation_dice(model, validation, context.device, shown)
                record["val_dice"] = mean_dice(scores)
                if step == args.steps:  # the final model's per-case Dice: compare_validation pairs two runs on it
                    record["val_cases"] = scores
                print(f"step {step}: loss {mean_loss:.4f} val {record['val_dice']}", file=sys.stderr, flush=True)
            context.barrier()
        last = record
        if context.is_main:
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % args.checkpoint_every == 0 or step == args.steps:
                tmp = run / "checkpoint.pt.tmp"
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                torch.save(state, tmp)
                os.replace(tmp, checkpoint)
    in_sync = context.in_sync(model)
    if context.is_main:
        log.close()
        from safetensors.torch import save_file
        final = run / "final.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(final))
        val_records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
                       if line.strip() and "val_dice" in line]
        finish_run_record(run, {"steps": step, "final_loss": last.get("loss"),
                                "val_dice": val_records[-1]["val_dice"] if val_records else None,
                                "training_seconds": last.get("seconds"), "ranks_in_sync": in_sync,
                                "mixed_precision": str(precision or torch.float32).replace("torch.", "")},
                          [final, checkpoint], time.perf_counter() - wall_start)
    context.barrier()
    context.close()
    return model


if __name__ == "__main__":
    sys.exit(main())
