"""The segmentation network's passes alone: seconds per pass and the memory they add, per engine and precision.

    python benchmarks/bench_network_pass.py [--case DIR] [--repeats 5] [--threads 2] [--mc-dropout]
    python benchmarks/bench_network_pass.py --model glioma_seg_fold0 --model-dir runs/cv/fold0/model   # another network

Each configuration (OpenVINO in float32, OpenVINO at ``auto`` precision: bfloat16 where the CPU computes it; ONNX
Runtime) runs in a fresh process: it reads the case, preprocesses it as ``analyze`` does (the model's working
grid), loads the network (its graph and compiled form already cached by one untimed warm-up process), then runs
``--repeats`` plain passes (with ``--mc-dropout``: with dropout masks drawn as the default analysis draws them).
Prints the first pass (a new shape: memory and kernels set up), the median of the others, and how far the passes took
the process's resident memory above what it held just before them (MiB), at its peak and after the last pass released
the network's working memory: the peak is reset first (Linux ``/proc/self/clear_refs``), so memory freed by the
reading and preprocessing does not hide part of it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_CASE = REPOSITORY.parent / "shared" / "data" / "brats18" / "Brats18_CBICA_AME_1"
CONFIGURATIONS = {"OpenVINO float32": {"GLIOMA_ANALYSIS_ENGINE": "openvino", "GLIOMA_ANALYSIS_PRECISION": "f32"},
                  "OpenVINO auto": {"GLIOMA_ANALYSIS_ENGINE": "openvino", "GLIOMA_ANALYSIS_PRECISION": "auto"},
                  "ONNX Runtime": {"GLIOMA_ANALYSIS_ENGINE": "onnxruntime"}}

CHILD = r'''
import json, statistics, sys, time
import numpy as np
from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.models import onnx_engine
from GliomaAnalysisLib.models.model_store import load_verified_card
from GliomaAnalysisLib.models.network_config import NetworkConfig
from GliomaAnalysisLib.models.segment import _network_feed, engine_of, load_segmentation_networks
from GliomaAnalysisLib.preprocessing.preprocess import preprocess

onnx_engine.set_threads(int(sys.argv[2]))
model, model_dir = sys.argv[5], sys.argv[6] or None
card = load_verified_card(model, model_dir)
config = NetworkConfig.from_dict(card["network"])
pre = preprocess(load_case(sys.argv[1], ground_truth=False), spacing=card["preprocessing"]["spacing_mm"],
                 divisible_by=config.divisor, include_labels=False)
network = load_segmentation_networks(model, model_dir, 1)[0][0]
rng = np.random.default_rng(0) if sys.argv[4] == "mc" else None
feed = _network_feed(config, np.ascontiguousarray(pre.image[None]), pre.presence[None].astype(np.float32), rng)
def status(field):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from the current resident memory
before = status("VmRSS")
seconds = []
for k in range(int(sys.argv[3])):
    start = time.perf_counter()
    network(keep_memory=k + 1 < int(sys.argv[3]), **feed)
    seconds.append(time.perf_counter() - start)
grown = (status("VmHWM") - before) / 1024
kept = (status("VmRSS") - before) / 1024  # after the last pass released the network's working memory
print(json.dumps({"engine": engine_of(network), "precision": getattr(network, "precision", "f32"),
                  "input": list(pre.image.shape), "first": seconds[0],
                  "others": statistics.median(seconds[1:]) if len(seconds) > 1 else None, "grown_mib": grown,
                  "kept_mib": kept}))
'''


def run(case: str, threads: int, repeats: int, settings: dict, mc_dropout: bool = False, model: str = "glioma_seg",
        model_dir: str = "") -> dict:
    env = {**os.environ, **settings, "PYTHONPATH": str(REPOSITORY)}
    done = subprocess.run([sys.executable, "-c", CHILD, case, str(threads), str(repeats), "mc" if mc_dropout else "",
                           model, model_dir], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{settings}: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default=str(DEFAULT_CASE))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mc-dropout", action="store_true", help="passes with dropout masks, as the default analysis")
    parser.add_argument("--model", default="glioma_seg", help="segmentation model name (default: the shipped one)")
    parser.add_argument("--model-dir", default="", help="folder holding --model (default: the shipped models)")
    args = parser.parse_args()
    for label, settings in CONFIGURATIONS.items():
        run(args.case, args.threads, 1, settings, False, args.model, args.model_dir)  # untimed: fills the cache
        found = run(args.case, args.threads, max(2, args.repeats), settings, args.mc_dropout, args.model,
                    args.model_dir)
        print(f"{label:<18} {found['engine']} {found['precision']:<5} input {'x'.join(map(str, found['input']))}: "
              f"first pass {found['first']:.3f} s, then {found['others']:.3f} s a pass (median of "
              f"{max(2, args.repeats) - 1}); resident memory +{found['grown_mib']:.0f} MiB at its peak, "
              f"+{found['kept_mib']:.0f} MiB after the last pass released its working memory", flush=True)


if __name__ == "__main__":
    main()
