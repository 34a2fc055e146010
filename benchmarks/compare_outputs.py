"""Dice of the shipped model's default analysis on every real case, to check that a speed change keeps the outputs.

    python benchmarks/compare_outputs.py --out before.json     # in a checkout of the commit before the change
    python benchmarks/compare_outputs.py --out after.json      # in the checkout with the change
    python benchmarks/compare_outputs.py --compare before.json after.json
    python benchmarks/compare_outputs.py --passes 2 --out two.json   # a change of the quality passes, measured
    python benchmarks/compare_outputs.py --classify --out after.json # also the classifiers' probabilities
    python benchmarks/compare_outputs.py --drop flair --out after.json  # each case analysed without FLAIR

Runs ``analyze`` (default settings, no classifiers: they do not change the segmentation) on each case of
``../shared/data/brats18`` and ``../shared/data/brats-extra`` (or --roots), scores WT / TC / ET Dice against the
expert labels (1.0 where both are empty, as the cross-validation scores them; files written before
2026-12-04 scored that 0.0) and writes them with the label volumes per case. With --classify the classifiers run too
and each case's probabilities are kept (each task's positive class, the MGMT late fusion's fused and the slice grade
model's default aggregation). --compare prints the per-case and mean differences, and where both files hold
probabilities the largest difference per task and how many cases changed side of 0.5.
Run it from the checkout whose code you measure (the repository root is put first on sys.path).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

REPOSITORY = Path.cwd()
SHARED = REPOSITORY.parent / "shared" / "data"
REGIONS = ("wt", "tc", "et")


def score(roots, threads: int, passes: Optional[int] = None, classify: bool = False,
          drop: Optional[str] = None) -> dict:
    sys.path.insert(0, str(REPOSITORY))
    import numpy as np
    import SimpleITK as sitk

    from GliomaAnalysisLib import analyze, load_case
    from GliomaAnalysisLib.io.labels import regions
    from GliomaAnalysisLib.pipeline.measures import dice  # 1.0 when both are empty, as in cross-validation
    from GliomaAnalysisLib.models import onnx_engine
    from GliomaAnalysisLib.pipeline import analysis

    onnx_engine.set_threads(threads)
    if passes:
        analysis.QUALITY_PASSES = passes  # what a change of the default would do

    cases = {}
    for root in roots:
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
            case = load_case(folder)
            if case.segmentation is None:
                continue
            truth = regions(_contiguous(sitk.GetArrayFromImage(case.segmentation)))
            if drop:  # the same images but one (in memory: 4D and DICOM inputs have no file per modality)
                case = load_case({m: case.images[m] for m in case.present if m != drop}, case_id=case.case_id,
                                 ground_truth=False)
            start = time.perf_counter()
            result = analyze(case, classify=classify).finish()
            predicted = regions(_contiguous(sitk.GetArrayFromImage(result.labels)))
            cases[folder.name] = {
                **{k: dice(predicted[k], truth[k]) for k in REGIONS},
                "volumes_ml": result.volumes_ml, "seconds": time.perf_counter() - start}
            cases[folder.name]["engine"] = f"{result.settings['engine']} {result.settings['precision']}"
            if classify:
                cases[folder.name]["probabilities"] = _probabilities(result)
            print(folder.name, {k: round(cases[folder.name][k], 4) for k in REGIONS}, flush=True)
    return {"repository": str(REPOSITORY), "passes": analysis.QUALITY_PASSES, "without": drop, "cases": cases,
            "engines": sorted({c["engine"] for c in cases.values()}),
            "mean": {k: float(np.mean([c[k] for c in cases.values()])) for k in REGIONS}}


def _probabilities(result) -> dict:
    """{task: probability of its positive class} of an analysis's classifiers (those that ran)."""
    found = {task: p["probability_positive"] for task, p in result.predictions.items() if p}
    if (result.mgmt_late_fusion or {}).get("fused") is not None:
        found["mgmt_late_fusion"] = result.mgmt_late_fusion["fused"]
    if (result.slice_grade or {}).get("probability") is not None:
        found["slice_grade"] = result.slice_grade["probability"]
    return found


def _contiguous(labels):
    from GliomaAnalysisLib.io.labels import to_contiguous

    return to_contiguous(labels) if labels.max() > 3 else labels


def compare(before_path: str, after_path: str) -> None:
    files = [json.loads(Path(p).read_text()) for p in (before_path, after_path)]
    before, after = (f["cases"] for f in files)
    common = sorted(set(before) & set(after))
    print("segmentation network: " + " -> ".join(", ".join(f.get("engines", ["unrecorded"])) for f in files))
    if files[0].get("without") != files[1].get("without"):
        inputs = [f"without {f['without']}" if f.get("without") else "with every modality" for f in files]
        raise SystemExit(f"{before_path} was analysed {inputs[0]}, {after_path} {inputs[1]}: not comparable")
    print(f"{'case':<28}" + "".join(f"{k.upper():>18}" for k in REGIONS))
    for case in common:
        print(f"{case:<28}" + "".join(f"{before[case][k]:8.4f} -> {after[case][k]:6.4f}" for k in REGIONS))
    for k in REGIONS:
        differences = [after[c][k] - before[c][k] for c in common]
        mean_before = sum(before[c][k] for c in common) / len(common)
        mean_after = sum(after[c][k] for c in common) / len(common)
        print(f"{k.upper()}: mean {mean_before:.4f} -> {mean_after:.4f} (difference {mean_after - mean_before:+.4f}; "
              f"per case from {min(differences):+.4f} to {max(differences):+.4f}; {len(common)} cases)")
    tasks = sorted({t for c in common for t in before[c].get("probabilities", {})
                    if t in after[c].get("probabilities", {})})
    for task in tasks:
        pairs = [(before[c]["probabilities"][task], after[c]["probabilities"][task]) for c in common
                 if task in before[c].get("probabilities", {}) and task in after[c].get("probabilities", {})]
        largest = max(abs(b - a) for a, b in pairs)
        mean = sum(abs(b - a) for a, b in pairs) / len(pairs)
        flipped = sum((a >= 0.5) != (b >= 0.5) for a, b in pairs)
        print(f"{task}: probability difference largest {largest:.4f}, mean {mean:.4f}; {flipped} of {len(pairs)} "
              f"cases on the other side of 0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="+", default=[str(SHARED / "brats18"), str(SHARED / "brats-extra")])
    parser.add_argument("--out", help="write the per-case Dice here (JSON)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, help="network passes of the default (quality) analysis to measure "
                        "(default: the checkout's QUALITY_PASSES)")
    parser.add_argument("--classify", action="store_true", help="run the classifiers too and keep their probabilities")
    parser.add_argument("--drop", choices=("t1", "t1ce", "t2", "flair"), help="analyse each case without this "
                        "modality (scored against the same expert labels)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    result = score(args.roots, args.threads, args.passes, args.classify, args.drop)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print("mean", {k: round(v, 4) for k, v in result["mean"].items()})


if __name__ == "__main__":
    main()
