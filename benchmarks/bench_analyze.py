"""Wall time and peak memory of a full ``analyze`` (load -> segment -> write the contract files) on one
240x240x155 case, side by side with MONAI's standard BraTS SegResNet (init_filters 16, blocks_down 1,2,2,4,
sliding window 128^3, overlap 0.5, random weights) on the same case, each in its own process.

    python benchmarks/bench_analyze.py [--case DIR] [--repeats 3] [--monai-repeats 1] [--threads 2]

Our runs include the classifiers (grade, IDH, 1p/19q, MGMT; their own time is printed) except the --no-classify row.

Without --case a 240x240x155 phantom is generated. Prints medians and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
start = time.perf_counter()
mode, case_dir, out = sys.argv[1], sys.argv[2], sys.argv[4]
if mode == "ours":
    from GliomaAnalysisLib.pipeline.analysis import analyze
    from GliomaAnalysisLib.reporting.writers import write_outputs
    flags = sys.argv[5].split(",") if len(sys.argv) > 5 else []
    result = analyze(case_dir, device="cpu", fast="fast" in flags, classify="noclassify" not in flags)
    write_outputs(result, out)
    classify_seconds = result.timings_s.get("classify", 0.0)
else:
    import numpy as np, SimpleITK as sitk
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet
    from GliomaAnalysisLib import load_case
    case = load_case(case_dir)
    channels = []
    for m in ("t1ce", "t1", "t2", "flair"):
        a = sitk.GetArrayFromImage(case.images[m]); brain = a > 0
        c = np.zeros_like(a); c[brain] = (a[brain] - a[brain].mean()) / a[brain].std(); channels.append(c)
    x = torch.from_numpy(np.stack(channels))[None]
    net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                    out_channels=3, dropout_prob=0.2).eval()
    with torch.inference_mode():
        y = sliding_window_inference(x, (128, 128, 128), 1, net, overlap=0.5)
    labels = (torch.sigmoid(y[0]) > 0.5).numpy().astype(np.uint8).sum(0)
    image = sitk.GetImageFromArray(labels); image.CopyInformation(case.images["t1ce"])
    sitk.WriteImage(image, out + "/segmentation.nii.gz", True)
print(json.dumps({"seconds": time.perf_counter() - start, "classify_seconds": locals().get("classify_seconds", 0.0),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run(mode: str, case_dir: str, threads: int, extra: str = "") -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([sys.executable, "-c", CHILD, mode, case_dir, str(threads), out, extra],
                                capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monai-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.case:
            case_dir = args.case
        else:
            from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom
            case_dir = str(write_phantom(make_phantom(2024), tmp))
        rows = {}
        for label, mode, extra, repeats in (("GliomaAnalysis analyze (quality, 4 passes)", "ours", "", args.repeats),
                                            ("GliomaAnalysis analyze --fast (1 pass)", "ours", "fast", args.repeats),
                                            ("GliomaAnalysis analyze --fast --no-classify", "ours", "fast,noclassify",
                                             args.repeats),
                                            ("MONAI SegResNet-16 sliding window 128^3/0.5", "monai", "",
                                             args.monai_repeats)):
            runs = [run(mode, case_dir, args.threads, extra) for _ in range(repeats)]
            rows[label] = (statistics.median(r["seconds"] for r in runs), max(r["peak_mb"] for r in runs))
            classify = statistics.median(r["classify_seconds"] for r in runs)
            print(f"{label:<46} {rows[label][0]:7.1f} s  peak {rows[label][1]:6.0f} MB  classifiers {classify:4.1f} s"
                  f"  ({repeats} run(s))", flush=True)
    monai_seconds = rows["MONAI SegResNet-16 sliding window 128^3/0.5"][0]
    for label in list(rows)[:3]:
        print(f"speed-up of '{label}' over MONAI: {monai_seconds / rows[label][0]:.1f}x")
    print(f"case: {Path(case_dir).name}, threads: {args.threads}")


if __name__ == "__main__":
    main()
