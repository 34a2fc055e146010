"""Clinical-input pipeline (SimpleITK fallback): registration accuracy, segmentation agreement and time.

Phantoms (and, when ``../shared/data/brats18`` exists, real BraTS validation cases) are "acquired" as separate
native series with known rigid motion on clinical grids (``native_phantom.CLINICAL_PROTOCOL``: 3D T1CE 1 mm,
2D T1 0.9x0.9x3 mm, T2 0.6x0.6x4 mm, FLAIR 0.9x0.9x5 mm, 4-10 degrees and 6-11 mm between series) and analysed
with the shipped model (``--fast``). Per case:

* TRE: target registration error (mm), max over the tumor centroid and its bounding-box corners, per series;
* Dice (WT/TC/ET) of the segmentation on the native T1CE grid against the transformed ground truth, for the
  skull-stripped series, the same series with skull and scalp (no brain extraction without BrainLes), and the
  skull-stripped series acquired without motion (what registration can at best give back); for real cases also
  the Dice of the original BraTS-space case;
* time: co-registration of the three series and the whole ``analyze`` (wall and CPU seconds).

    python benchmarks/bench_clinical.py [--seeds 2024 7 31] [--real 2] [--threads 2] [--out bench_clinical.json]
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from GliomaAnalysisLib import load_case  # noqa: E402
from GliomaAnalysisLib.pipeline.analysis import analyze  # noqa: E402
from GliomaAnalysisLib.io.geometry import Geometry  # noqa: E402
from GliomaAnalysisLib.io.labels import regions, to_contiguous  # noqa: E402
from GliomaAnalysisLib.synthetic.native_phantom import CLINICAL_PROTOCOL, Acquisition, NativePhantom, acquire  # noqa: E402
from GliomaAnalysisLib.synthetic.phantom import Phantom, make_phantom  # noqa: E402
from GliomaAnalysisLib.preprocessing.registration import transform_from_record  # noqa: E402

NO_CLASSIFY = {"classify": False} if "classify" in inspect.signature(analyze).parameters else {}
REAL_DATA = ROOT.parent / "shared" / "data" / "brats18"
REAL_CASES = ("Brats18_CBICA_AQN_1", "Brats18_TCIA01_378_1", "Brats18_CBICA_AME_1", "Brats18_2013_20_1")
"""Validation cases of the shipped model (never trained on)."""


def dice(prediction: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    p, t = regions(prediction), regions(truth)
    return {r: round(float(2 * np.sum(p[r] & t[r]) / max(1, np.sum(p[r]) + np.sum(t[r]))), 3)
            for r in ("wt", "tc", "et")}


def tre(native: NativePhantom, report: Dict) -> Dict[str, float]:
    """Max target registration error (mm) at the tumor centroid and bounding-box corners, per series."""
    to_ref = native.series["t1ce"].to_phantom.GetInverse()
    out = {}
    for modality, record in report["steps"]["coregistration"]["series"].items():
        estimated = transform_from_record(record["transform"])
        to_phantom = native.series[modality].to_phantom
        out[modality] = round(max(math.dist(to_phantom.TransformPoint(estimated.TransformPoint(
            to_ref.TransformPoint(tuple(p)))), p) for p in native.tumor_points()), 3)
    return out


def run(native: NativePhantom) -> Dict:
    """Analyse the native series (auto, SimpleITK backend); Dice on the native T1CE grid, TRE, times."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = analyze(load_case(native.images()), fast=True, device="cpu", clinical_backend="simpleitk",
                     **NO_CLASSIFY)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    settings = result.settings["preprocessing"]
    truth = to_contiguous(sitk.GetArrayFromImage(native.truth_on("t1ce")))
    series = settings.get("steps", {}).get("coregistration", {}).get("series", {})
    return {"dice": dice(sitk.GetArrayFromImage(result.labels), truth),
            "tre_mm": tre(native, settings) if series else {},
            "registration_s": round(sum(s["seconds"] for s in series.values()), 2),
            "analyze_wall_s": round(wall, 2), "analyze_cpu_s": round(cpu, 2),
            "on_native_grid": Geometry.of(result.labels) == Geometry.of(native.series["t1ce"].image),
            "path_ran": settings["path_ran"]}


def still(protocol: Dict[str, Acquisition]) -> Dict[str, Acquisition]:
    """The same grids without head motion."""
    return {m: Acquisition(a.spacing, tilt_deg=a.tilt_deg) for m, a in protocol.items()}


def real_case(folder: Path) -> Phantom:
    case = load_case(folder)
    images = {m: np.round(sitk.GetArrayFromImage(case.images[m])).astype(np.int16) for m in case.present}
    return Phantom(folder.name, images, sitk.GetArrayFromImage(case.segmentation), case.geometry, None)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[2024, 7, 31])
    parser.add_argument("--real", type=int, default=2, help="real BraTS validation cases (when present)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_clinical.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rows = []
    sources = [("phantom", make_phantom(seed, (120, 120, 78), (2.0, 2.0, 2.0), case_id=f"Phantom_{seed}"))
               for seed in args.seeds]
    if REAL_DATA.is_dir():
        sources += [("real", real_case(REAL_DATA / name)) for name in REAL_CASES[:args.real]]
    for kind, source in sources:
        row = {"case": source.case_id, "kind": kind}
        row["stripped"] = run(acquire(source, CLINICAL_PROTOCOL, head=False, seed=1))
        row["no_motion"] = run(acquire(source, still(CLINICAL_PROTOCOL), head=False, seed=1))
        if kind == "phantom":
            row["skull_on"] = run(acquire(source, CLINICAL_PROTOCOL, head=True, seed=2))
        else:
            case = load_case(REAL_DATA / source.case_id)
            result = analyze(case, fast=True, device="cpu",
                             **NO_CLASSIFY)
            row["brats_space_dice"] = dice(sitk.GetArrayFromImage(result.labels), to_contiguous(source.labels))
        print(json.dumps(row), flush=True)
        rows.append(row)

    def median(values):
        return round(statistics.median(values), 3) if values else None

    summary = {}
    for variant in ("stripped", "skull_on", "no_motion"):
        got = [r[variant] for r in rows if variant in r]
        summary[variant] = {
            "cases": len(got),
            "tre_max_mm": max((v for r in got for v in r["tre_mm"].values()), default=None),
            "tre_median_mm": median([v for r in got for v in r["tre_mm"].values()]),
            "dice_median": {k: median([r["dice"][k] for r in got]) for k in ("wt", "tc", "et")},
            "registration_s_median": median([r["registration_s"] for r in got]),
            "analyze_wall_s_median": median([r["analyze_wall_s"] for r in got]),
            "analyze_cpu_s_median": median([r["analyze_cpu_s"] for r in got]),
            "all_on_native_grid": all(r["on_native_grid"] for r in got)}
    real = [r for r in rows if r["kind"] == "real"]
    if real:
        summary["real_brats_space_dice_median"] = {k: median([r["brats_space_dice"][k] for r in real])
                                                   for k in ("wt", "tc", "et")}
        summary["real_stripped_dice_median"] = {k: median([r["stripped"]["dice"][k] for r in real])
                                                for k in ("wt", "tc", "et")}
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
