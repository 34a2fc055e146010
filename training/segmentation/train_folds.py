"""Train several cross-validation folds (and 'all') of one recipe at once, each in its own process: the way to fill
one GPU with a small network. Bundles the results for the trip back to the machine that holds the NIfTI files.

    python -m training.segmentation.train_folds --folds 0,1,2,3,4,all --run-dir RUN --bundle-out OUT \\
        --config training/configs/segmentation.yaml --data PACK --workers 3 --threads 1
    tar xf OUT/fold0.tar -C RUN ...        # here: then cross_validate --run-dir RUN predicts the held-out cases

Every option other than --folds, --run-dir and --bundle-out goes to ``train_segmentation`` unchanged (checked once
before anything starts); each fold trains into RUN/fold{k} and resumes from its checkpoint. ``--bundle-out`` writes
OUT/fold{k}.tar of each fold as soon as it finishes: config.json, run.json, log.jsonl and final.safetensors in
float16, as the model store saves shipped weights (6 MB instead of 12).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from ..common.config import parse_args
from ..common.distributed import PrecisionError, mixed_precision, uses_cuda
from . import train_segmentation

PROGRESS_EVERY = 30.0
"""Seconds between progress lines."""


def fold_names(text: str) -> List[str]:
    """'0,1,all' -> ['0', '1', 'all']."""
    names = [f.strip() for f in text.split(",") if f.strip()]
    if not names or any(not (f == "all" or f.isdigit()) for f in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated fold numbers and/or 'all', each once")
    return names


def last_step(run: Path) -> int:
    """The last step logged in ``run``/log.jsonl (0 before the first)."""
    log = run / "log.jsonl"
    lines = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return int(json.loads(lines[-1])["step"]) if lines else 0


def bundle(run: Path, name: str, out: Path) -> Path:
    """out/<name>.tar: the run's records and its final weights in float16, under <name>/."""
    from safetensors.torch import load_file, save

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.tar"
    with tarfile.open(path, "w") as tar:
        for record in ("config.json", "run.json", "log.jsonl"):
            if (run / record).is_file():
                tar.add(run / record, arcname=f"{name}/{record}")
        weights = {k: (v.half() if v.is_floating_point() else v)
                   for k, v in load_file(str(run / "final.safetensors")).items()}
        data = save(weights)
        info = tarfile.TarInfo(f"{name}/final.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", required=True, type=fold_names, help="e.g. 0,1,2,3,4,all")
    parser.add_argument("--run-dir", required=True, help="RUN: each fold trains into RUN/fold{k}")
    parser.add_argument("--bundle-out", default=None, help="write OUT/fold{k}.tar of each finished fold")
    args, rest = parser.parse_known_args(argv)
    run = Path(args.run_dir)
    checked = parse_args(train_segmentation.build_parser(), rest + ["--run-dir", str(run / "fold0")])
    try:  # once here, not in every fold's log
        mixed_precision(torch.device("cuda" if uses_cuda(checked.device) else "cpu"), checked.amp, checked.cpu_bf16)
    except PrecisionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    steps = checked.steps
    processes: Dict[str, subprocess.Popen] = {}
    run.mkdir(parents=True, exist_ok=True)
    for fold in args.folds:
        command = [sys.executable, "-m", "training.segmentation.train_segmentation", *rest,
                   "--run-dir", str(run / f"fold{fold}"), "--fold", fold, "--resume"]
        log = open(run / f"fold{fold}.log", "a")
        processes[fold] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    started = time.perf_counter()
    shown = started
    bundled: set = set()
    while len(bundled) < len(processes):
        time.sleep(0.5)
        for fold, process in processes.items():
            if fold not in bundled and process.poll() is not None:
                bundled.add(fold)  # at once: a fold that overruns a time limit later costs only itself
                if process.returncode == 0 and args.bundle_out:
                    bundle(run / f"fold{fold}", f"fold{fold}", Path(args.bundle_out))
        if time.perf_counter() - shown >= PROGRESS_EVERY:
            shown = time.perf_counter()
            steps_now = ", ".join(f"fold {f} {last_step(run / f'fold{f}')}/{steps}" for f in args.folds)
            print(f"{shown - started:.0f} s: {steps_now}", file=sys.stderr, flush=True)
    failed = [f for f, p in processes.items() if p.returncode != 0]
    for fold in failed:
        print(f"error: fold {fold} failed (exit {processes[fold].returncode}); see {run / f'fold{fold}.log'}",
              file=sys.stderr)
    print(f"{len(args.folds) - len(failed)} of {len(args.folds)} folds trained in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
