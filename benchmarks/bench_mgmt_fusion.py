"""Time the MGMT late-fusion prediction (model loading excluded) on a BraTS-sized working grid.

    python benchmarks/bench_mgmt_fusion.py [--case DIR] [--model-dir DIR] [--engine onnx|torch] [--mc-samples 16]
                                           [--repeats 5] [--threads N]

--engine onnx (default) runs the ensemble's parts on ONNX Runtime (graphs of a stored model cached as in a real run),
torch the torch model. Without --case, a 240x240x155 phantom (1 mm) is generated and preprocessed onto the 2 mm grid
with its true labels; without a shipped ``mgmt_fusion`` model, a randomly initialised one of the default size is
timed (same cost).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from GliomaAnalysisLib import load_case, preprocess
from GliomaAnalysisLib.models import onnx_engine
from GliomaAnalysisLib.models.mgmt_fusion import (DEFAULT_MODEL_NAME, MGMTFusionConfig, build_from_card,
                                                  load_mgmt_fusion, mgmt_parts, mgmt_parts_of, predict_mgmt_fusion)
from GliomaAnalysisLib.models.model_store import ModelError, load_card
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom


def load(engine: str, model_dir):
    """(model or parts, card, description) of the stored model, else of a random one of the default size."""
    try:
        if engine == "torch":
            model, card = load_mgmt_fusion(model_dir)
        else:
            parts = mgmt_parts(load_card(DEFAULT_MODEL_NAME, model_dir))
            model, card, _ = onnx_engine.load_parts(DEFAULT_MODEL_NAME, model_dir, parts, mgmt_parts_of,
                                                    build_from_card)
        return model, card, f"shipped model (sha256 {card['sha256'][:12]})"
    except ModelError:
        card = {"network": MGMTFusionConfig().to_dict()}
        model = build_from_card(card).eval()
        if engine == "onnx":
            model = {name: onnx_engine.OnnxPart(onnx_engine.export_part(spec))
                     for name, spec in mgmt_parts_of(model).items()}
        return model, card, "random weights, default size"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", help="case folder with a segmentation (default: a generated phantom)")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--engine", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--mc-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads (default: the engine's own)")
    args = parser.parse_args()
    if args.threads and args.engine == "torch":
        import torch

        torch.set_num_threads(args.threads)
    onnx_engine.set_threads(args.threads)
    model, card, source = load(args.engine, args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = Path(args.case) if args.case else write_phantom(make_phantom(2024), tmp)
        pre = preprocess(load_case(case_dir), spacing=(2, 2, 2), divisible_by=8)
    labels = pre.labels  # contiguous 0..3 on the working grid
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = predict_mgmt_fusion(model, card, pre.image, pre.presence, labels, mc_samples=args.mc_samples)
        times.append(time.perf_counter() - start)
    print(f"model: {source}; engine {args.engine}; working grid {pre.image.shape[1:]}; {result['n_slices']} slices; "
          f"{args.mc_samples} MC-dropout samples; threads {args.threads or 'default'}")
    print(f"predict_mgmt_fusion: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeats} runs; fused {result['fused']:.3f} +- {result['uncertainty']:.3f}")


if __name__ == "__main__":
    main()
