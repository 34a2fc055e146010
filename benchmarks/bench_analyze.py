"""Whole-process wall time and peak memory of ``glioma-analysis analyze`` (default, --fast, --fast --no-classify),
side by side with MONAI's standard BraTS SegResNet (init_filters 16, blocks_down 1,2,2,4, sliding window 128^3,
overlap 0.5, random weights) on the same case, each run in its own process; then where the time of one default
and one --fast run goes (imports, each analysis stage, writing the outputs).

    python benchmarks/bench_analyze.py [--case DIR] [--repeats 3] [--monai-repeats 1 (0: none)] [--threads 2]

Without --case a 240x240x155 phantom is generated. Prints medians, the ratios to MONAI and the profile. The first
analysis of a model exports its network to ONNX into the user cache; one untimed warm-up run does that first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MONAI_CHILD = r'''
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
import numpy as np, SimpleITK as sitk
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet
from GliomaAnalysisLib import load_case
case = load_case(sys.argv[1])
channels = []
for m in ("t1ce", "t1", "t2", "flair"):
    a = sitk.GetArrayFromImage(case.images[m]); brain = a > 0
    c = np.zeros_like(a); c[brain] = (a[brain] - a[brain].mean()) / a[brain].std(); channels.append(c)
x = torch.from_numpy(np.stack(channels))[None]
net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3,
                dropout_prob=0.2).eval()
with torch.inference_mode():
    y = sliding_window_inference(x, (128, 128, 128), 1, net, overlap=0.5)
labels = (torch.sigmoid(y[0]) > 0.5).numpy().astype(np.uint8).sum(0)
image = sitk.GetImageFromArray(labels); image.CopyInformation(case.images["t1ce"])
sitk.WriteImage(image, sys.argv[3] + "/segmentation.nii.gz", True)
'''

PROFILE_CHILD = r'''
import json, sys, time
start = time.perf_counter()
import numpy, SimpleITK, onnxruntime
from GliomaAnalysisLib.models import onnx_engine
onnx_engine.set_threads(int(sys.argv[2]))
from GliomaAnalysisLib.reporting.render3d import prestart_render
prestart_render()  # as the CLI does
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.reporting.writers import write_outputs
imports = time.perf_counter() - start
result = analyze(sys.argv[1], device="cpu", fast=sys.argv[4] == "fast")
written = time.perf_counter()
write_outputs(result, sys.argv[3])
print(json.dumps({"imports": imports, **result.timings_s, "write": time.perf_counter() - written,
                  "process": time.perf_counter() - start, "torch_imported": "torch" in sys.modules,
                  "engine": f"{result.settings['engine']} {result.settings['precision']}"}))
'''


def timed_process(command: List[str], env: Dict[str, str], cwd: Optional[str] = None) -> Tuple[float, float, str]:
    """(wall seconds, peak resident MB, stdout) of one child process run in ``cwd``; its own peak, from
    ``os.wait4``."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, text=True, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode:
            raise SystemExit(f"{' '.join(command[:4])} failed:\n{stderr.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, stdout.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monai-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cli = [str(Path(sys.executable).with_name("glioma-analysis")), "analyze"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.case:
            case_dir = args.case
        else:
            from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom
            case_dir = str(write_phantom(make_phantom(2024), tmp))
        timed_process(cli + [case_dir, "--out", f"{tmp}/warm-up"], env)  # exports the ONNX graph once
        rows: Dict[str, Tuple[float, float]] = {}
        for label, flags, repeats in (("analyze (default: 2 passes, classifiers, report)", [], args.repeats),
                                      ("analyze --fast (1 pass)", ["--fast"], args.repeats),
                                      ("analyze --fast --no-classify", ["--fast", "--no-classify"], args.repeats),
                                      ("MONAI SegResNet-16 sliding window 128^3/0.5", None, args.monai_repeats)):
            if repeats < 1:
                continue
            runs = []
            for k in range(repeats):
                out = f"{tmp}/{len(rows)}-{k}"
                os.makedirs(out, exist_ok=True)
                command = ([sys.executable, "-c", MONAI_CHILD, case_dir, str(args.threads), out] if flags is None
                           else cli + [case_dir, "--out", out, *flags])
                runs.append(timed_process(command, env)[:2])
            rows[label] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
            print(f"{label:<52} {rows[label][0]:6.2f} s  peak {rows[label][1]:5.0f} MB  ({repeats} run(s))",
                  flush=True)
        monai = rows.get("MONAI SegResNet-16 sliding window 128^3/0.5", (None,))[0]
        for label in list(rows)[:3] if monai else []:
            print(f"MONAI / '{label}': {monai / rows[label][0]:.1f}x")
        profiles: Dict[str, List[Dict]] = {"default": [], "fast": []}
        for mode, runs in profiles.items():
            for k in range(args.repeats):
                out = f"{tmp}/profile-{mode}-{k}"
                runs.append(json.loads(timed_process([sys.executable, "-c", PROFILE_CHILD, case_dir,
                                                      str(args.threads), out, mode], env)[2].strip().splitlines()[-1]))
    print(f"profile (medians of {args.repeats} in-process runs, seconds):  default   --fast")
    for part in profiles["default"][0]:
        if part not in ("torch_imported", "engine"):
            print(f"  {part:<24} " + "  ".join(f"{statistics.median(p.get(part, 0.0) for p in runs):8.2f}"
                                                for runs in profiles.values()))
    print(f"torch imported by a run: {any(p['torch_imported'] for runs in profiles.values() for p in runs)}")
    engines = sorted({p["engine"] for runs in profiles.values() for p in runs})
    print(f"case: {Path(case_dir).name}, threads: {args.threads}, segmentation network: {', '.join(engines)}")


if __name__ == "__main__":
    main()
