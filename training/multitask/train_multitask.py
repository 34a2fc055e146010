"""Train the multi-task classifier (grade, IDH, 1p/19q, MGMT) on the segmentation network's features.

    python -m training.multitask.train_multitask --out /root/glioma-runs/multitask [--steps 600] [--resume]

The backbone is the shipped segmentation network, frozen by default (CPU budget: only fusion and heads learn);
``--finetune`` also trains the backbone at a tenth of the learning rate with the segmentation loss of the local
crop as a fifth task. Losses: class-weighted soft cross-entropy per task over the samples that have its label,
combined by aleatoric-uncertainty weighting (seed 001, eq. 7). Tumor-CutMix with probability ``--cutmix``.
Checkpoints (``checkpoint.pt``) and a JSON-lines log go to ``--out``; the best heads by validation loss are kept;
temperatures are fitted on the validation split at the end and ``evaluate`` reports the held-out test phantoms and
the real validation cases separately.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from GliomaAnalysisLib.io.modalities import MODALITIES
from GliomaAnalysisLib.models.model_store import load_model
from GliomaAnalysisLib.models.multitask import TASKS, MultiTaskConfig, composition_features, feature_masks
from GliomaAnalysisLib.models.multitask_net import MultiTaskNet

from ..common.classification_data import (WORKING_SPACING, ClassificationSample, ClassificationSplit, class_weights,
                                          draw_probabilities, load_classification_split)
from ..segmentation.segmentation_data import VALIDATION_CASES
from ..common.config import parse_args as parse_with_config
from ..common.datasets import DEFAULT_CACHE
from ..common.losses import dice_ce_loss, masked_task_loss, UncertaintyWeighting
from .multitask_data import evaluation_example, training_example
from ..common.run_record import classification_split_ids, finish_run_record, start_run_record
from ..segmentation.segmentation_data import sample_crop
from ..common.run_record import git_commit

WORKING_VOXEL_ML = float(np.prod(WORKING_SPACING)) / 1000.0
"""The volume of one voxel of the training cases' 2 mm grid in mL."""


def example_features(model: MultiTaskNet, example: Dict[str, np.ndarray]) -> torch.Tensor:
    """The heads' input (1, ``pooled_dim``) of one example (``multitask_data``): the backbone's encoder maps of the
    whole image pooled with the tumor box as masks, then (when the layout reads it) the composition of the example's
    labels (read as ``analyze`` reads it: without T1CE no voxel is enhancing); gradients flow where the model's
    parameters require them."""
    maps = model.encoder_maps(torch.from_numpy(example["image"][None]), torch.from_numpy(example["presence"][None]))
    masks = feature_masks(example["labels"], model.config, [m.shape[2:] for m in maps], box=example["box"])
    pooled = model.pooled_features(*maps, *(torch.from_numpy(m) for m in masks.values()))
    if not model.config.composition:
        return pooled
    composition = composition_features(example["labels"], WORKING_VOXEL_ML,
                                       et_assessable=bool(example["presence"][MODALITIES.index("t1ce")] > 0))
    return torch.cat([pooled, torch.from_numpy(composition)], dim=1)


def stacked_targets(examples: Sequence[Dict[str, np.ndarray]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(targets (N, tasks, 2), known (N, tasks)) of examples."""
    return (torch.from_numpy(np.stack([e["targets"] for e in examples])),
            torch.from_numpy(np.stack([e["known"] for e in examples])))


def pooled_features(model: MultiTaskNet, samples: List[ClassificationSample]) -> torch.Tensor:
    """Backbone features (N, F) of unaugmented cases (the backbone is frozen, so they are computed once)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([example_features(model, evaluation_example(s, model.config)) for s in samples])


def known_targets(samples: List[ClassificationSample]) -> Dict[str, torch.Tensor]:
    """(targets (N, tasks, 2), known (N, tasks)) of unaugmented cases."""
    targets = np.zeros((len(samples), len(TASKS), 2), dtype=np.float32)
    known = np.zeros((len(samples), len(TASKS)), dtype=np.float32)
    for i, s in enumerate(samples):
        for t, task in enumerate(TASKS):
            if s.targets.get(task) is not None:
                targets[i, t, s.targets[task]] = 1
                known[i, t] = 1
    return {"targets": torch.from_numpy(targets), "known": torch.from_numpy(known)}


def cache_training_views(model: MultiTaskNet, samples: List[ClassificationSample], views: int, cutmix: float,
                         modality_dropout: float, seed: int, path: Path, log) -> Dict[str, torch.Tensor]:
    """Backbone features of ``views`` augmented views of every training case, computed once (frozen backbone):
    pooled (N * views, F), targets (N * views, tasks, 2), known (N * views, tasks). Saved to ``path`` case by case
    so an interrupted run resumes where it stopped; a file made for another backbone, other cases or other
    augmentation settings (its ``key``, :func:`views_key`) is computed again, not reused."""
    key = views_key(model, samples, views, cutmix, modality_dropout, seed)
    done: Dict[str, np.ndarray] = dict(np.load(path)) if path.is_file() else {}
    if done and str(done.pop("key", "")) != key:
        log(event="views_stale", file=str(path), reason="made for another backbone, cases or settings")
        done = {}
    have = len(done.get("pooled", [])) // views
    model.eval()
    pooled, targets, known = ([done[k]] if k in done else [] for k in ("pooled", "targets", "known"))
    for index in range(have, len(samples)):
        rng = np.random.default_rng([seed, index])
        examples = [training_example(samples[index], model.config, rng,
                                     samples[int(rng.integers(len(samples)))] if view and rng.random() < cutmix
                                     else None, modality_dropout) for view in range(views)]
        with torch.no_grad():
            pooled.append(torch.cat([example_features(model, e) for e in examples]).numpy())
        view_targets, view_known = stacked_targets(examples)
        targets.append(view_targets.numpy())
        known.append(view_known.numpy())
        if (index + 1) % 10 == 0 or index + 1 == len(samples):
            np.savez(path, pooled=np.concatenate(pooled), targets=np.concatenate(targets), known=np.concatenate(known),
                     key=np.array(key))
            log(event="views", cases=index + 1, of=len(samples))
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in (("pooled", pooled), ("targets", targets),
                                                                 ("known", known))}


def views_key(model: MultiTaskNet, samples: List[ClassificationSample], views: int, cutmix: float,
              modality_dropout: float, seed: int) -> str:
    """What a views file depends on, as one string: the sha256 of the backbone's weights, the network config, the
    training cases in order with their source and labels, and the augmentation settings."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return json.dumps({"backbone": digest.hexdigest(), "config": model.config.to_dict(),
                       "cases": [[s.case_id, s.source, s.targets] for s in samples], "views": views,
                       "cutmix": cutmix, "modality_dropout": modality_dropout, "seed": seed},
                      sort_keys=True, default=str)


def head_losses(logits: Dict[str, torch.Tensor], targets: torch.Tensor, known: torch.Tensor,
                weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Masked class-weighted loss per task (tasks without any label in the batch are left out)."""
    return {task: masked_task_loss(logits[task], targets[:, t], known[:, t], weights[task])
            for t, task in enumerate(TASKS) if known[:, t].any()}


def mc_probabilities(model: MultiTaskNet, pooled: torch.Tensor, samples: int = 20, seed: int = 0,
                     ) -> Dict[str, np.ndarray]:
    """Uncalibrated logit differences averaged over MC-dropout passes of the heads: {task: (N,)}.

    Returned as mean logit difference per case so temperatures can be fitted on them; inference averages the
    calibrated probabilities instead (nearly identical for small dropout variance)."""
    torch.manual_seed(seed)
    model.heads_dropout(True)
    total = {task: torch.zeros(len(pooled)) for task in TASKS}
    with torch.no_grad():
        for _ in range(samples):
            logits = model.classify(pooled)
            for task in TASKS:
                total[task] += logits[task][:, 1] - logits[task][:, 0]
    model.heads_dropout(False)
    return {task: (total[task] / samples).numpy() for task in TASKS}


def draw_rows(rng: np.random.Generator, rows: int, batch: int, draw: Optional[np.ndarray], views: int = 1,
              ) -> np.ndarray:
    """``batch`` row indices drawn with replacement from ``rows`` rows that hold ``views`` consecutive rows per
    training case: every row alike without ``draw``, else case i's rows with probability ``draw[i]`` (N,) shared
    among its views."""
    if draw is None:
        return rng.integers(rows, size=batch)
    return rng.choice(rows, size=batch, p=np.repeat(draw / views, views))


def real_share_value(text) -> Optional[float]:
    """``--real-share``'s value (flag text or config number): a share strictly between 0 and 1, or None for
    'none'."""
    if str(text).strip().lower() == "none":
        return None
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'none'") from None
    if not 0.0 < share < 1.0:
        raise argparse.ArgumentTypeError(f"{share} does not lie between 0 and 1")
    return share


def build_parser() -> argparse.ArgumentParser:
    """The options of a training run (the cross-validation adds its own)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--real-root", type=Path, nargs="+", default=[Path("../shared/data/brats18")],
                        help="one or more data folders with labels.csv")
    parser.add_argument("--no-real", action="store_true", help="phantoms only")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--n-phantoms", type=int, default=240)
    parser.add_argument("--seg-model", default="glioma_seg")
    parser.add_argument("--seg-model-dir", type=Path, default=None, help="folder of --seg-model (default: shipped)")
    parser.add_argument("--all-real-train", action="store_true",
                        help="every real case trains (validation: phantoms only), as for the shipped model")
    parser.add_argument("--local-crop", type=int, default=64, help="tumor-centred crop edge (voxels of the 2 mm grid)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--views", type=int, default=6, help="augmented views per training case (frozen backbone)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cutmix", type=float, default=0.5, help="probability of Tumor-CutMix per example")
    parser.add_argument("--modality-dropout", type=float, default=0.3)
    parser.add_argument("--finetune", action="store_true", help="train the backbone too, segmentation as a task")
    parser.add_argument("--composition", action="store_true",
                        help="the heads also read the segmentation's composition (log enhancing mL, enhancing share, "
                             "T1CE present)")
    parser.add_argument("--real-share", type=real_share_value, default=None,
                        help="share (between 0 and 1) of the heads' training draws that come from the real cases, "
                             "each alike, the phantoms sharing the rest; the class weights follow the draws; "
                             "Tumor-CutMix partners are still drawn alike; ignored when the training cases are of "
                             "one source; 'none' (the default): every case alike")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--patience", type=int, default=8, help="evaluations without improvement before stopping")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views-seed", type=int, default=None,
                        help="seed of the augmented views (default: --seed); another --seed on the same views seed "
                             "draws new heads on the same views, to measure the heads' seed noise")
    parser.add_argument("--resume", action="store_true")
    return parser


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "log.jsonl"

    def log(**record) -> None:
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    split = load_classification_split(None if args.no_real else args.real_root, args.cache, args.n_phantoms,
                                      real_validation=() if args.all_real_train else VALIDATION_CASES)
    start_run_record(args.out, {"args": vars(args)}, classification_split_ids(split), args.seed, "cpu",
                     "training.multitask.train_multitask", config_file=getattr(args, "config", None))
    seg, _ = load_model(args.seg_model, args.seg_model_dir)
    model = build_multitask(seg, args)
    (args.out / "network.json").write_text(json.dumps(model.config.to_dict(), indent=1))
    summary = fit_heads(model, split, args, log)
    finish_run_record(args.out, {"best_validation_loss": summary["best"], "steps": summary["step"],
                                 "sigmas": summary["sigmas"]},
                      [args.out / "best.pt"] if (args.out / "best.pt").is_file() else [], summary["seconds"])
    return 0


def build_multitask(seg: torch.nn.Module, args: argparse.Namespace) -> MultiTaskNet:
    """A multi-task network on ``seg``'s weights (frozen unless ``args.finetune``), heads seeded by ``args.seed``."""
    config = MultiTaskConfig(local_crop=(args.local_crop,) * 3, backbone=seg.config.to_dict(),
                             composition=bool(getattr(args, "composition", False)))
    torch.manual_seed(args.seed)
    model = MultiTaskNet(config)
    model.backbone.load_state_dict(seg.state_dict())
    if not args.finetune:
        model.freeze_backbone()
    return model


def fit_heads(model: MultiTaskNet, split: ClassificationSplit, args: argparse.Namespace, log) -> Dict:
    """Train the heads (and the backbone with ``args.finetune``) on ``split.train``, early-stopped on the loss of
    ``split.validation`` (without validation cases: ``args.steps`` steps); keeps ``best.pt`` and a resumable
    ``checkpoint.pt`` in ``args.out``. Returns {step, best, seconds, sigmas, early_stopped}."""
    config = model.config
    weighting_tasks = TASKS + (("segmentation",) if args.finetune else ())
    weighting = UncertaintyWeighting(weighting_tasks)
    head_parameters = list(model.fusion.parameters()) + list(model.heads.parameters()) + list(weighting.parameters())
    groups = [{"params": head_parameters, "lr": args.lr}]
    if args.finetune:
        groups.append({"params": model.backbone.parameters(), "lr": args.lr / 10})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-3)
    draw = draw_probabilities(split.train, getattr(args, "real_share", None))
    real_share = None if draw is None else args.real_share  # as applied: None when one source is absent
    weights = {task: torch.tensor(class_weights(split.train, task, draw), dtype=torch.float32) for task in TASKS}
    rng = np.random.default_rng(args.seed)
    step, best, stale, elapsed = 0, float("inf"), 0, 0.0
    checkpoint = args.out / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("real_share") != real_share:
            raise SystemExit(f"error: {checkpoint}: trained with real share {state.get('real_share')}, asked to go "
                             f"on with {real_share}; give the same --real-share or another --out")
        model.load_state_dict(state["model"])
        weighting.load_state_dict(state["weighting"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, stale, elapsed = state["step"], state["best"], state["stale"], state["elapsed"]
        rng = np.random.default_rng([args.seed, step])
        log(event="resumed", step=step)
    else:
        log(event="start", train=len(split.train), validation=len(split.validation), test=len(split.test),
            class_weights={t: list(map(float, w)) for t, w in weights.items()}, real_share_applied=real_share,
            args={k: str(v) for k, v in vars(args).items()}, git_commit=git_commit())
    validation_pooled = pooled_features(model, split.validation) if split.validation else None
    validation_targets = known_targets(split.validation)

    def validation_loss() -> float:
        if validation_pooled is None:
            return -float(step)  # no validation cases: the latest heads are the best
        model.heads_dropout(False)
        with torch.no_grad():
            losses = head_losses(model.classify(validation_pooled), validation_targets["targets"],
                                 validation_targets["known"], weights)
        return float(sum(losses.values()) / len(losses))

    views_seed = args.seed if getattr(args, "views_seed", None) is None else args.views_seed
    cached = None if args.finetune else cache_training_views(
        model, split.train, args.views, args.cutmix, args.modality_dropout, views_seed,
        args.out / f"views-{args.views}.npz", log)
    clock = time.perf_counter()
    while step < args.steps and stale < args.patience:
        if cached is not None:  # frozen backbone: heads on cached features of augmented views
            model.heads_dropout(True)
            pick = torch.from_numpy(draw_rows(rng, len(cached["pooled"]), args.batch, draw, args.views))
            pooled, targets, known = cached["pooled"][pick], cached["targets"][pick], cached["known"][pick]
        else:  # fine-tuning: augmented views computed on the fly, gradients through the backbone
            examples = []
            for _ in range(args.batch):
                sample = split.train[int(draw_rows(rng, len(split.train), 1, draw)[0])]
                partner = split.train[int(rng.integers(len(split.train)))] if rng.random() < args.cutmix else None
                examples.append(training_example(sample, config, rng, partner, args.modality_dropout))
            model.train()
            pooled = torch.cat([example_features(model, e) for e in examples])
            targets, known = stacked_targets(examples)
        losses = head_losses(model.classify(pooled), targets, known, weights)
        if args.finetune:
            crops = [sample_crop(split.train[int(rng.integers(len(split.train)))], 64, rng) for _ in range(2)]
            image, labels, presence = (torch.from_numpy(np.stack(c)) for c in zip(*crops))
            losses["segmentation"] = dice_ce_loss(model.backbone(image, presence), labels)
        total = weighting(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            elapsed += time.perf_counter() - clock
            clock = time.perf_counter()
            loss = validation_loss()
            improved = loss < best - 1e-4
            best, stale = (loss, 0) if improved else (best, stale + 1)
            if improved:
                torch.save(model.state_dict(), args.out / "best.pt")
            log(event="eval", step=step, train_losses={k: round(float(v.detach()), 4) for k, v in losses.items()},
                validation_loss=round(loss, 4), best=round(best, 4), sigmas=weighting.sigmas(),
                seconds=round(elapsed, 1))
            torch.save({"model": model.state_dict(), "weighting": weighting.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step, "best": best, "stale": stale,
                        "elapsed": elapsed, "sigmas": weighting.sigmas(), "real_share": real_share}, checkpoint)
    log(event="done", step=step, best_validation_loss=round(best, 4), seconds=round(elapsed, 1),
        sigmas=weighting.sigmas(), early_stopped=stale >= args.patience)
    return {"step": step, "best": best, "seconds": elapsed, "sigmas": weighting.sigmas(),
            "early_stopped": stale >= args.patience}


if __name__ == "__main__":
    raise SystemExit(main())
