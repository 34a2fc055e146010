"""Train the segmentation network on ../shared/data/brats18 (fixed split) with checkpoints and resume.

    python -m training.train_segmentation --run-dir ~/glioma-runs/seg1 --steps 1500 [--resume]

Writes into --run-dir: config.json, log.jsonl (loss per step, validation Dice every --val-every steps),
checkpoint.pt (model + optimizer + step, written atomically every --checkpoint-every steps) and, at the end,
final.safetensors. ``python -m training.export_segmentation`` turns a run into shipped weights + model card.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from GliomaAnalysisLib.inference import predict
from GliomaAnalysisLib.labels import regions
from GliomaAnalysisLib.measures import dice
from GliomaAnalysisLib.network import GliomaSegNet, NetworkConfig

from .losses import dice_ce_loss
from .segmentation_data import VALIDATION_CASES, TrainingCase, load_split, sample_crop


def validate(model: GliomaSegNet, cases: List[TrainingCase]) -> Dict[str, float]:
    """Mean Dice (WT, TC, ET) over ``cases`` on the working grid, all modalities present, one plain pass."""
    scores = []
    for case in cases:
        shape = case.labels.shape
        pad = [(0, 0)] + [(0, (-n) % model.config.divisor) for n in shape]
        probabilities, _, _ = predict(model, np.pad(case.image, pad), np.ones(4, dtype=np.float32),
                                      torch.device("cpu"))
        prediction = regions(probabilities[:, :shape[0], :shape[1], :shape[2]].argmax(0))
        truth = regions(case.labels)
        scores.append({name: dice(prediction[name], truth[name]) for name in ("wt", "tc", "et")})
    model.train()
    return {k: float(np.mean([s[k] for s in scores])) for k in ("wt", "tc", "et")}


def learning_rate(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/brats18"))
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "glioma-analysis" / "training"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=64, help="crop edge in working-grid voxels")
    parser.add_argument("--spacing", type=float, default=2.0, help="working-grid spacing in mm")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--modality-dropout", type=float, default=0.5)
    parser.add_argument("--phantoms", type=int, default=8, help="synthetic phantoms added to the training set")
    parser.add_argument("--phantom-probability", type=float, default=0.15)
    parser.add_argument("--val-every", type=int, default=150)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--network", default="{}", help="JSON overrides of NetworkConfig")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config = NetworkConfig.from_dict({**NetworkConfig().to_dict(), **json.loads(args.network)})
    spacing = (args.spacing,) * 3
    train, validation = load_split(Path(args.data), Path(args.cache), spacing, args.phantoms)
    real = [c for c in train if not c.synthetic]
    synthetic = [c for c in train if c.synthetic]
    if not real:
        print(f"error: no labelled cases found under {args.data}", file=sys.stderr)
        return 2
    (run / "config.json").write_text(json.dumps({
        "args": vars(args), "network": config.to_dict(), "git_commit": git_commit(),
        "train_cases": [c.case_id for c in train], "validation_cases": [c.case_id for c in validation],
        "validation_split": list(VALIDATION_CASES)}, indent=2))

    torch.manual_seed(args.seed)
    model = GliomaSegNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-5)
    step = 0
    checkpoint = run / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resumed at step {step}", file=sys.stderr)
    rng = np.random.default_rng([args.seed, step])

    log_path = run / "log.jsonl"
    previous = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.is_file() else []
    previous = [r for r in previous if r["step"] <= step]  # drop entries after the checkpoint we resume from
    log_path.write_text("".join(json.dumps(r) + "\n" for r in previous))
    elapsed_before = previous[-1]["seconds"] if previous else 0.0
    log = open(log_path, "a")
    model.train()
    started = time.perf_counter()
    while step < args.steps:
        batch = []
        for _ in range(args.batch):
            pool = synthetic if synthetic and rng.random() < args.phantom_probability else real
            batch.append(sample_crop(pool[rng.integers(len(pool))], args.crop, rng, args.modality_dropout))
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        presence = torch.from_numpy(np.stack([b[2] for b in batch]))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = dice_ce_loss(model(x, presence), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        step += 1
        record = {"step": step, "loss": round(loss.item(), 5), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(elapsed_before + time.perf_counter() - started, 1)}
        if validation and (step % args.val_every == 0 or step == args.steps):
            record["val_dice"] = validate(model, validation)
            print(f"step {step}: loss {loss.item():.4f} val {record['val_dice']}", file=sys.stderr, flush=True)
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % args.checkpoint_every == 0 or step == args.steps:
            tmp = run / "checkpoint.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            os.replace(tmp, checkpoint)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "final.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
