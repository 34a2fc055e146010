"""Train the slice-grade classifier (seed 002) and export it with its model card.

    python -m training.slice_grade.train_slice_grade --config training/configs/slice_grade.yaml --out RUN \
        --cv-report CV/cv_report.json   # the shipped run (CV: training.slice_grade.cross_validate's run folder);
                                        # --resume continues it, --evaluate-only re-exports it

Data: ``load_classification_split`` (the real cases of ``--real-roots`` with their real grade, phantoms with
simulated grade); with ``--all-real`` every real case trains (the shipped model: its real-case evidence is the
cross-validation of ``training/slice_grade/cross_validate.py``), else the segmentation split's real cases validate.
Slice-level BCE with inverse-frequency class weights, AdamW, augmentation (``augmented_batch``), early stopping on
the patient-level BCE (soft vote) of the validation phantoms; checkpoint every epoch (``--resume`` continues);
JSON-lines log ``RUN/log.jsonl``. The real validation cases are never used for early stopping or calibration, so
they stay a held-out check. At the end ``export_slice_grade`` fits the temperature, evaluates and writes the model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from GliomaAnalysisLib.models.slice_grade import SliceGradeConfig, aggregate
from GliomaAnalysisLib.models.slice_grade_net import SliceGradeNet

from ..common.classification_data import ClassificationSplit, load_classification_split
from ..common.config import parse_args as parse_with_config
from ..common.datasets import DEFAULT_CACHE, REAL_DATA_ROOTS
from ..segmentation.segmentation_data import VALIDATION_CASES
from ..common.metrics import roc_auc
from ..common.run_record import classification_split_ids, start_run_record
from .slice_grade_data import CaseSlices, augmented_batch, cut_cases



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, plots, metrics)")
    p.add_argument("--real-roots", type=Path, nargs="+", default=[Path(r) for r in REAL_DATA_ROOTS],
                   help="folders of real cases, each with its labels.csv")
    p.add_argument("--all-real", action="store_true",
                   help="every real case trains (no real validation split; the evidence comes from cross-validation)")
    p.add_argument("--cv-report", type=Path, default=None,
                   help="cv_report.json of training.slice_grade.cross_validate: the card's real-case evidence")
    p.add_argument("--no-real", action="store_true", help="phantoms only")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--n-phantoms", type=int, default=240)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=8, help="epochs without validation improvement before stopping")
    p.add_argument("--slices-per-case", type=int, default=8, help="slices drawn from each training case per epoch")
    p.add_argument("--real-repeat", type=int, default=2, help="times each real training case is drawn per epoch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--max-minutes", type=float, default=22.0, help="stop training after this wall-clock time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--backbone", choices=("small_cnn", "efficientnet"), default="small_cnn")
    p.add_argument("--widths", type=int, nargs="+", default=list(SliceGradeConfig().widths))
    p.add_argument("--crop", type=int, default=SliceGradeConfig().crop)
    p.add_argument("--max-slices", type=int, default=SliceGradeConfig().max_slices)
    p.add_argument("--temperature-fit", choices=("slice", "attention"), default="attention",
                   help="fit the temperature on the attention-fused patient probability (default: calibrates the "
                        "reported default) or on slice logits")
    p.add_argument("--evaluate-only", action="store_true",
                   help="no training: calibrate, evaluate and export RUN/best.safetensors")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="write slice_grade.safetensors/.json/.md here (default: Resources/models)")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--predicted-seg", action="store_true",
                   help="also evaluate with slices chosen by the shipped segmentation model (slower)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if args.all_real and not args.no_real and not args.no_export and args.cv_report is None:
        parser.error("--all-real leaves no real case to validate on: give the cross-validation's report with "
                     "--cv-report (python -m training.slice_grade.cross_validate), or --no-export")
    if args.cv_report is not None and not args.cv_report.is_file():
        parser.error(f"--cv-report {args.cv_report}: file not found")
    return args


def log_line(run: Path, record: Dict) -> None:
    with open(run / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


@torch.no_grad()
def case_logits(model: SliceGradeNet, cases: Sequence[CaseSlices]) -> List[np.ndarray]:
    """Uncalibrated slice logits float64 (M,) of each case's inference slices."""
    model.eval()
    return [model(torch.from_numpy(c.eval)).double().numpy() for c in cases]


def validation_scores(model: SliceGradeNet, cases: Sequence[CaseSlices]) -> Dict[str, float]:
    """Patient-level BCE of the soft vote (the early-stopping criterion) and AUC of each aggregation."""
    probabilities = [1 / (1 + np.exp(-z)) for z in case_logits(model, cases)]
    patient = {name: np.array([aggregate(p)[name] for p in probabilities]) for name in ("majority", "soft",
                                                                                        "attention")}
    y = np.array([c.target for c in cases], dtype=float)
    soft = np.clip(patient["soft"], 1e-6, 1 - 1e-6)
    scores = {"val_bce": float(-np.mean(y * np.log(soft) + (1 - y) * np.log(1 - soft)))}
    scores.update({f"val_auc_{k}": roc_auc(v, y) for k, v in patient.items()})
    return scores


def draw_epoch(cases: Sequence[CaseSlices], per_case: int, real_repeat: int,
               rng: np.random.Generator) -> List[tuple]:
    """(case index, slice index) pairs of one epoch, shuffled: ``per_case`` slices per case (fewer when it has
    fewer), real cases ``real_repeat`` times."""
    pairs = []
    for index, case in enumerate(cases):
        for _ in range(real_repeat if case.source == "real" else 1):
            n = len(case.train)
            chosen = rng.choice(n, size=min(per_case, n), replace=False)
            pairs += [(index, int(k)) for k in chosen]
    order = rng.permutation(len(pairs))
    return [pairs[k] for k in order]


def _save_checkpoint(run: Path, model, optimizer, state: Dict) -> None:
    tmp = run / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, tmp)
    tmp.replace(run / "checkpoint.pt")


def cut_split(split: ClassificationSplit, config: SliceGradeConfig) -> Dict[str, List[CaseSlices]]:
    """Slices of every case with a grade: ``train``, ``validation`` (phantoms: early stopping, temperature),
    ``test`` (phantoms), ``real_validation`` (held out)."""
    validation = cut_cases(split.validation, config)
    return {"train": cut_cases(split.train, config),
            "validation": [c for c in validation if c.source == "phantom"],
            "test": [c for c in cut_cases(split.test, config) if c.source == "phantom"],
            "real_validation": [c for c in validation if c.source == "real"]}


def train(args: argparse.Namespace, cases: Dict[str, List[CaseSlices]], config: SliceGradeConfig) -> SliceGradeNet:
    """The training loop; returns the best model (lowest validation BCE) in eval mode."""
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    (run / "network.json").write_text(json.dumps(config.to_dict(), indent=2))
    train_cases, val_cases = cases["train"], cases["validation"]
    targets = np.array([c.target for c in train_cases])
    counts = np.array([(targets == 0).sum(), (targets == 1).sum()], dtype=float)
    class_weight = counts.sum() / (2 * np.maximum(counts, 1))
    print(f"slice grade: {len(train_cases)} training cases ({int(counts[1])} HGG, {int(counts[0])} LGG; "
          f"class weights LGG {class_weight[0]:.2f} HGG {class_weight[1]:.2f}), {len(val_cases)} validation "
          f"phantoms", file=sys.stderr)

    torch.manual_seed(args.seed)
    model = SliceGradeNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler_epochs = max(1, args.epochs)
    state = {"epoch": 0, "best_bce": float("inf"), "best_epoch": -1, "bad_epochs": 0, "elapsed_s": 0.0}
    if args.resume and (run / "checkpoint.pt").is_file():
        checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
        model.load_state_dict(checkpoint.pop("model"))
        optimizer.load_state_dict(checkpoint.pop("optimizer"))
        state.update(checkpoint)
        print(f"resumed at epoch {state['epoch']} (best {state['best_bce']:.4f} at {state['best_epoch']})",
              file=sys.stderr)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    clock = time.time() - state["elapsed_s"]
    while state["epoch"] < args.epochs and state["bad_epochs"] < args.patience:
        epoch = state["epoch"]
        if (time.time() - clock) / 60 > args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached", file=sys.stderr)
            break
        rng = np.random.default_rng([args.seed, epoch])
        for group in optimizer.param_groups:  # cosine decay over the planned epochs
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * epoch / scheduler_epochs))
        model.train()
        pairs = draw_epoch(train_cases, args.slices_per_case, args.real_repeat, rng)
        total, seen = 0.0, 0
        for start in range(0, len(pairs), args.batch):
            chunk = pairs[start:start + args.batch]
            stacks = np.stack([train_cases[i].train[k] for i, k in chunk])
            y = torch.tensor([float(train_cases[i].target) for i, _ in chunk])
            w = torch.tensor([class_weight[train_cases[i].target] for i, _ in chunk], dtype=torch.float32)
            x = augmented_batch(stacks, config.crop, rng)
            loss = (loss_fn(model(x), y) * w).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chunk)
            seen += len(chunk)
            print(f"\repoch {epoch + 1}/{args.epochs} {seen}/{len(pairs)} slices loss {total / seen:.4f}",
                  end="", file=sys.stderr)
        scores = validation_scores(model, val_cases)
        improved = scores["val_bce"] < state["best_bce"] - 1e-4
        if improved:
            state.update(best_bce=scores["val_bce"], best_epoch=epoch, bad_epochs=0)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "best.safetensors"))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["elapsed_s"] = time.time() - clock
        record = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                  **scores, "best_epoch": state["best_epoch"] + 1, "elapsed_s": round(state["elapsed_s"], 1)}
        log_line(run, record)
        print(f"\repoch {epoch + 1}: train {record['train_loss']:.4f} val BCE {scores['val_bce']:.4f} "
              f"AUC soft {scores['val_auc_soft']} {'*' if improved else ''} ({state['elapsed_s'] / 60:.1f} min)",
              file=sys.stderr)
        _save_checkpoint(run, model, optimizer, state)
    model.load_state_dict(load_file(str(run / "best.safetensors")))
    model.eval()
    return model


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    split = load_classification_split(None if args.no_real else args.real_roots, args.cache, args.n_phantoms,
                                      real_validation=() if args.all_real else tuple(VALIDATION_CASES))
    start_run_record(args.out, {"args": vars(args)}, classification_split_ids(split), args.seed, "cpu",
                     "training.slice_grade.train_slice_grade", config_file=getattr(args, "config", None))
    if args.evaluate_only:
        config = SliceGradeConfig.from_dict(json.loads((args.out / "network.json").read_text()))
    else:
        config = SliceGradeConfig(backbone=args.backbone, widths=tuple(args.widths), crop=args.crop,
                                  max_slices=args.max_slices)
    cases = cut_split(split, config)
    print(f"data loaded and slices cut in {time.time() - started:.0f} s", file=sys.stderr)
    if args.evaluate_only:
        model = SliceGradeNet(config)
        model.load_state_dict(load_file(str(args.out / "best.safetensors")))
        model.eval()
    else:
        model = train(args, cases, config)
    from .export_slice_grade import evaluate_and_export

    return evaluate_and_export(model, split, cases, args)


if __name__ == "__main__":
    main()
