"""Time the MGMT late-fusion prediction (model loading excluded) on a BraTS-sized working grid.

    python benchmarks/bench_mgmt_fusion.py [--case DIR] [--model-dir DIR] [--mc-samples 16] [--repeats 5] [--threads N]

Without --case, a 240x240x155 phantom (1 mm) is generated and preprocessed onto the 2 mm grid with its true labels;
without a shipped ``mgmt_fusion`` model, a randomly initialised one of the default size is timed (same cost).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from GliomaAnalysisLib import load_case, preprocess
from GliomaAnalysisLib.models.mgmt_fusion import MGMTFusionEnsemble, load_mgmt_fusion, predict_mgmt_fusion
from GliomaAnalysisLib.models.model_store import ModelError
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", help="case folder with a segmentation (default: a generated phantom)")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--mc-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ensemble, card = load_mgmt_fusion(args.model_dir)
        source = f"shipped model (sha256 {card['sha256'][:12]})"
    except ModelError:
        ensemble, card, source = MGMTFusionEnsemble().eval(), {}, "random weights, default size"
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = Path(args.case) if args.case else write_phantom(make_phantom(2024), tmp)
        pre = preprocess(load_case(case_dir), spacing=(2, 2, 2), divisible_by=8)
    labels = pre.labels  # contiguous 0..3 on the working grid
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = predict_mgmt_fusion(ensemble, card, pre.image, pre.presence, labels, mc_samples=args.mc_samples)
        times.append(time.perf_counter() - start)
    print(f"model: {source}; working grid {pre.image.shape[1:]}; {result['n_slices']} slices; "
          f"{args.mc_samples} MC-dropout samples; torch threads {torch.get_num_threads()}")
    print(f"predict_mgmt_fusion: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeats} runs; fused {result['fused']:.3f} +- {result['uncertainty']:.3f}")


if __name__ == "__main__":
    main()
