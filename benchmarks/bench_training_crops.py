"""Cost of the segmentation training batches (crop + augmentation), the part a GPU run waits on.

    python benchmarks/bench_training_crops.py [--data PACK_OR_ROOTS ...] [--batches 30] [--workers 0 2]

Prints the median seconds of one batch of the recipe in --config (default: the shipped one, two 64^3 crops) on one
core (torch single-threaded), then, for each --workers value, the batches per second ``crop_stream.batches`` delivers
with that many worker processes. Run it with nothing else busy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.common.config import CONFIG_DIR, parse_args  # noqa: E402
from training.common.datasets import DEFAULT_CACHE, REAL_DATA_ROOTS  # noqa: E402
from training.segmentation.crop_stream import batches, make_batch  # noqa: E402
from training.segmentation.segmentation_data import load_cases  # noqa: E402
from training.segmentation.train_segmentation import build_parser, crop_settings  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS, help="data roots or a training pack")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--config", default=str(CONFIG_DIR / "segmentation.yaml"),
                        help="training recipe whose batches are timed (train_segmentation's YAML)")
    args = parser.parse_args(argv)
    recipe = parse_args(build_parser(), ["--config", args.config, "--run-dir", "unused"])
    torch.set_num_threads(1)
    cases = load_cases([Path(d) for d in args.data], Path(args.cache), (recipe.spacing,) * 3)
    if not cases:
        print(f"error: no labelled cases found under {', '.join(args.data)}", file=sys.stderr)
        return 2
    settings = crop_settings(recipe, rank=0)
    make_batch(cases, settings, 0)  # warm-up
    times = []
    for step in range(1, args.batches + 1):
        started = time.perf_counter()
        make_batch(cases, settings, step)
        times.append(time.perf_counter() - started)
    print(f"{len(cases)} cases; one batch of {settings.batch} crops of {settings.crop}^3 on one core: "
          f"median {np.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, {args.batches} batches)")
    for workers in args.workers:
        stream = batches(cases, settings, 0, args.batches + 1, workers)
        next(stream)  # the pool's start-up is not counted
        started = time.perf_counter()
        count = sum(1 for _ in stream)
        print(f"workers {workers}: {count / (time.perf_counter() - started):.2f} batches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
