"""Time phantom generation, case loading and preprocessing (medians over repeats) and peak memory.

    python benchmarks/bench_foundation.py [--case DIR] [--repeats 5]

Without --case, a 240x240x155 phantom is written to a temporary folder and used.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from GliomaAnalysisLib import load_case, preprocess
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", help="case folder (default: a generated phantom)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t_phantom, phantom = timed(lambda: make_phantom(2024), args.repeats)
        case_dir = Path(args.case) if args.case else write_phantom(phantom, tmp)
        t_load, case = timed(lambda: load_case(case_dir), args.repeats)
        t_pre1, pre1 = timed(lambda: preprocess(case, divisible_by=8), args.repeats)
        t_pre2, pre2 = timed(lambda: preprocess(case, spacing=(2, 2, 2), divisible_by=8), args.repeats)
        t_back, _ = timed(lambda: pre2.to_reference(pre2.labels if pre2.labels is not None else pre2.brain_mask,
                                                    "label"), args.repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"case: {case_dir.name} {case.geometry.size}  (medians of {args.repeats})")
    print(f"phantom generation 240x240x155   {t_phantom:6.2f} s")
    print(f"load_case (4 modalities + seg)   {t_load:6.2f} s")
    print(f"preprocess, native spacing       {t_pre1:6.2f} s  -> {tuple(pre1.image.shape)}")
    print(f"preprocess, 2 mm                 {t_pre2:6.2f} s  -> {tuple(pre2.image.shape)}")
    print(f"labels back to reference grid    {t_back:6.2f} s")
    print(f"peak resident memory             {peak_mb:6.0f} MB")


if __name__ == "__main__":
    main()
