"""Seconds of one segmentation training step on the CPU, float32 against bfloat16 mixed precision (``--cpu-bf16``).

    python benchmarks/bench_training_step.py [--batch 4] [--crop 64] [--steps 6] [--threads 2] [--network JSON]

One step of train_segmentation (its ``training_step``: the input to channels-last for bfloat16, forward under the
run's autocast, the loss, backward, gradient clipping, AdamW) on random input of the recipe's size, the network of ``--network`` (default: the shipped layout). Prints the median of the
steps after the first (warm-up) for each precision and their ratio. bfloat16 is timed only on a CPU with bfloat16
instructions (``training.common.distributed.cpu_computes_bf16``). Batches are not drawn here: see
``bench_training_crops.py``. Run it with nothing else busy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from GliomaAnalysisLib.models.network import NetworkConfig  # noqa: E402
from training.common.distributed import cpu_computes_bf16, grad_scaler  # noqa: E402
from training.segmentation.train_segmentation import training_model, training_step  # noqa: E402


def step_seconds(config: NetworkConfig, batch: int, crop: int, steps: int, dtype: Optional[torch.dtype]) -> List[float]:
    """Wall seconds of each of ``steps`` training steps on (batch, 4, crop, crop, crop) input."""
    torch.manual_seed(0)
    model, optimizer = training_model(config, torch.device("cpu"), dtype, lr=1e-3)
    image = torch.randn(batch, 4, crop, crop, crop)
    presence = torch.ones(batch, 4)
    targets = torch.softmax(torch.randn(batch, 4, crop, crop, crop), dim=1)
    scaler = grad_scaler(dtype)
    model.train()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        training_step(model, optimizer, scaler, image, targets, presence, dtype, 0.5, ("tc", "et"))
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="steps per precision; the first is warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", default="{}", help="JSON overrides of NetworkConfig")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = NetworkConfig.from_dict({**NetworkConfig().to_dict(), **json.loads(args.network)})
    precisions = {"float32": None}
    if cpu_computes_bf16():
        precisions["bfloat16"] = torch.bfloat16
    medians = {}
    for name, dtype in precisions.items():
        seconds = step_seconds(config, args.batch, args.crop, args.steps, dtype)
        medians[name] = statistics.median(seconds[1:])
        print(f"{name}: {medians[name]:.2f} s a step (median of {len(seconds) - 1}; "
              f"{args.batch} crops of {args.crop}^3, {args.threads} threads)", flush=True)
    if "bfloat16" in medians:
        print(f"bfloat16 / float32: {medians['float32'] / medians['bfloat16']:.2f}x faster")
    else:
        print("bfloat16: not timed, this CPU has no bfloat16 instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
