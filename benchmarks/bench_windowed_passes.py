"""Seconds of a segmentation model's passes by a sliding window (``segment(window=...)``, the coarse-to-fine second
stage's way of running): per region size, the median over repeats after one warm-up run.

    python benchmarks/bench_windowed_passes.py --model glioma_seg_fold0 --model-dir runs/cpu_cv/fine/fold0/model \
        --window 64 --passes 2 --shapes 64,64,64 76,88,80 100,110,96 120,130,120

The input is random (the network's time does not depend on the values); MC-dropout is on, as in the default
analysis. Engine and precision are the library's defaults ($GLIOMA_ANALYSIS_ENGINE / _PRECISION change them).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from GliomaAnalysisLib.models.model_store import load_verified_card  # noqa: E402
from GliomaAnalysisLib.models.network_config import NetworkConfig  # noqa: E402
from GliomaAnalysisLib.models.segment import segment  # noqa: E402
from GliomaAnalysisLib.models.sliding_window import window_starts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glioma_seg")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--window", type=int, default=64, help="voxels per axis")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=["64,64,64", "76,88,80", "120,130,120"],
                        help="region sizes Z,Y,X in voxels")
    args = parser.parse_args()
    config = NetworkConfig.from_dict(load_verified_card(args.model, args.model_dir)["network"])
    for text in args.shapes:
        shape = tuple(int(n) for n in text.split(","))
        image = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
        windows = int(np.prod([len(window_starts(n, args.window)) for n in shape]))
        seconds = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            result = segment(args.model, args.model_dir, config, image, np.ones(4, np.float32), passes=args.passes,
                             mc_dropout=True, window=args.window)
            seconds.append(time.perf_counter() - start)
        print(f"{'x'.join(map(str, shape))} voxels, {windows} windows x {args.passes} passes: median "
              f"{statistics.median(seconds[1:]):.2f} s ({result.engine}, {result.precision})")


if __name__ == "__main__":
    main()
