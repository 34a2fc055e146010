"""Cohort throughput of ``glioma-analysis batch`` with 1 and 2 jobs, against single ``analyze`` processes.

    python benchmarks/bench_batch.py [--root ../shared/data/brats18] [--cases 10] [--threads 2] [--rounds 1]

Takes the first --cases case folders under --root (their files linked into a temporary cohort), runs one
``glioma-analysis analyze`` process per case (the baseline: what a shell loop costs), then ``batch --jobs 1`` and
``batch --jobs 2`` over all of them, and prints the seconds per case and cases per hour of each, and the start-up a
batch pays once (median of 3 processes that import the CLI and open the networks' sessions). One untimed warm-up
analysis first exports the networks to the ONNX cache. With --rounds N the whole sequence runs N times in turn (the
VM's speed drifts by 10 % within minutes) and the medians over the rounds close the output, with the batch case
against the bound "single process minus start-up" of each round.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats18"
START_UP_CHILD = r'''
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.models.segment import load_segmentation_networks
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES
from GliomaAnalysisLib.pipeline.classify import CLASSIFIERS, load_classifier
load_segmentation_networks("glioma_seg", None, QUALITY_PASSES)
for classifier in CLASSIFIERS:
    load_classifier(classifier, None)
'''
"""What a batch pays once instead of per case: Python start-up, the CLI's imports, the networks' sessions."""


def run(command, env) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (batch shares them among jobs)")
    parser.add_argument("--rounds", type=int, default=1, help="times the whole sequence runs, in turn")
    args = parser.parse_args()
    folders = sorted(p for p in Path(args.root).iterdir() if p.is_dir())[:args.cases]
    if not folders:
        raise SystemExit(f"{args.root}: no case folders")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cli = str(Path(sys.executable).with_name("glioma-analysis"))
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        for folder in folders:
            (cohort / folder.name).mkdir(parents=True)
            for image in folder.iterdir():
                if "_seg" not in image.name:  # ground truth is not an input
                    os.symlink(image.resolve(), cohort / folder.name / image.name)
        first = str(cohort / folders[0].name)
        run([cli, "analyze", first, "--out", f"{tmp}/warm-up"], env)
        rounds = []
        for round_number in range(args.rounds):
            single = sum(run([cli, "analyze", str(cohort / f.name), "--out", f"{tmp}/single-{round_number}-{f.name}"],
                             env) for f in folders) / len(folders)
            start_up = sorted(run([sys.executable, "-c", START_UP_CHILD], env) for _ in range(3))[1]
            print(f"round {round_number + 1}: one analyze process per case, {len(folders)} cases: {single:5.2f} s per "
                  f"case, {3600 / single:6.0f} cases per hour; start-up (Python, imports, sessions) {start_up:.2f} s: "
                  f"a batch case should take <= {single - start_up:.2f} s", flush=True)
            per_case = {}
            for jobs in (1, 2):
                seconds = run([cli, "batch", str(cohort), "--out", f"{tmp}/batch-{round_number}-{jobs}", "--jobs",
                               str(jobs)], env)
                per_case[jobs] = seconds / len(folders)
                print(f"round {round_number + 1}: batch --jobs {jobs}, {len(folders)} cases: {seconds:6.1f} s = "
                      f"{per_case[jobs]:5.2f} s per case, {3600 / per_case[jobs]:6.0f} cases per hour, "
                      f"{single - per_case[jobs]:+.2f} s a case against one process per case", flush=True)
            rounds.append((single, start_up, per_case[1], per_case[2]))
    if args.rounds > 1:
        single, start_up, one, two = (statistics.median(r[k] for r in rounds) for k in range(4))
        margins = ", ".join(f"{r[0] - r[1] - r[2]:+.2f}" for r in rounds)
        print(f"medians of {args.rounds} rounds: one process per case {single:.2f} s, start-up {start_up:.2f} s, "
              f"batch --jobs 1 {one:.2f} s ({3600 / one:.0f} an hour), --jobs 2 {two:.2f} s ({3600 / two:.0f} an "
              f"hour); bound minus batch --jobs 1 per round (>= 0: within the bound): {margins}")
    print(f"threads: {args.threads}, cases from {args.root}")


if __name__ == "__main__":
    main()
