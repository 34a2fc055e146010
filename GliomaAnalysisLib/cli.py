"""Command-line front door: ``glioma-analysis {phantom,inspect,demo}``.

User mistakes end with a one-line ``glioma-analysis: error: ...`` on stderr and exit status 2, never a
traceback. Progress goes to stderr; results to files (and a short summary to stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ._version import __version__
from .errors import GliomaAnalysisError

DEMO_SEED = 2024  # an HGG phantom with necrosis, enhancing rim and edema
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."


def _progress(message: str) -> None:
    print(f"[glioma-analysis] {message}", file=sys.stderr, flush=True)


def _add_case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case_dir", nargs="?",
                        help="folder holding the modality files (recognised by name), or one 4D multi-channel file")
    for modality in ("t1", "t1ce", "t2", "flair"):
        parser.add_argument(f"--{modality}", metavar="FILE", help=f"{modality} image (overrides the folder's)")
    parser.add_argument("--reference", choices=("t1", "t1ce", "t2", "flair"),
                        help="modality whose grid the outputs use (default: t1ce, else t1, flair, t2)")
    _add_channels_argument(parser)


def _add_channels_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", metavar="M1,M2,...",
                        help="modality of each channel of a 4D input file, in order (default: the Medical "
                             "Segmentation Decathlon's flair,t1,t1ce,t2)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when present, else CPU (default)")
    parser.add_argument("--fast", action="store_true", help="one network pass instead of two (no TTA / MC-dropout), "
                        "by the lighter network the model's card names for it, if any, and without the card's fine "
                        "stage (about 1 s less; less accurate: model card)")
    parser.add_argument("--single-model", action="store_true",
                        help="segment every case with the requested model, also a case without a modality or a --fast "
                             "run for which its card names another model (e.g. glioma_seg_without_flair)")
    parser.add_argument("--no-classify", action="store_true",
                        help="segmentation only: skip the grade / IDH / 1p19q / MGMT classifiers")


def _add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preprocess", choices=("auto", "none", "brats"), default="auto",
                        help="clinical input: auto (default) runs co-registration / brain extraction only when the "
                             "inputs do not look BraTS-preprocessed; none uses them as they are; brats always runs it")
    parser.add_argument("--clinical-backend", choices=("auto", "brainles", "simpleitk"), default="auto",
                        help="auto (default): BrainLes when installed with its models (extra [clinical]), else "
                             "SimpleITK rigid co-registration without brain extraction")


def _load_from_args(args: argparse.Namespace, ground_truth: bool = False):
    """The case the arguments name; ground truth is read only when asked for (``inspect``, never ``analyze``)."""
    from .io.case import load_case, scan_folder
    from .io.modalities import MODALITIES

    explicit = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    if args.case_dir is None and not explicit:
        raise GliomaAnalysisError("no input: give a case folder or at least one of --t1/--t1ce/--t2/--flair")
    if args.case_dir is None:
        return load_case(explicit, reference=args.reference)
    if not explicit or Path(args.case_dir).is_file():
        if explicit:
            raise GliomaAnalysisError(f"{args.case_dir}: a 4D file holds every modality; give --channels, not "
                                      f"--{next(iter(explicit))}")
        return load_case(args.case_dir, reference=args.reference, ground_truth=ground_truth, channels=args.channels)
    scan = scan_folder(args.case_dir)
    inputs: Dict[str, object] = dict(scan.inputs)
    inputs.update(explicit)
    return load_case(inputs, reference=args.reference, segmentation=scan.ground_truth if ground_truth else None,
                     case_id=Path(args.case_dir).resolve().name)


def cmd_phantom(args: argparse.Namespace) -> int:
    from .synthetic.phantom import write_cohort
    if args.n < 1:
        raise GliomaAnalysisError(f"--n must be at least 1, got {args.n}")
    start = time.perf_counter()
    write_cohort(args.out, args.n, args.seed, tuple(args.size), tuple(args.spacing),
                 progress=lambda i, n, case: _progress(f"phantom {i}/{n}: {case}"))
    _progress(f"wrote {args.n} phantom case(s) and labels.csv to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def describe_case(case, spacing: Optional[Sequence[float]] = (2.0, 2.0, 2.0)) -> dict:
    """A JSON-ready summary of a loaded case and its preprocessed working grid."""
    from .preprocessing.clinical import detect
    from .preprocessing.preprocess import preprocess

    start = time.perf_counter()
    pre = preprocess(case, spacing=spacing, divisible_by=8)
    seconds = time.perf_counter() - start
    summary = {
        "case_id": case.case_id,
        "inputs": {m: case.sources[m] for m in case.present},
        "missing": case.missing,
        "reference": case.reference,
        "reference_geometry": {"size": case.geometry.size, "spacing_mm": case.geometry.spacing,
                               "origin_mm": case.geometry.origin, "direction": case.geometry.direction},
        "working_grid": {"shape_czyx": list(pre.image.shape), "spacing_mm": pre.working.spacing},
        "presence": pre.presence.tolist(),
        "brain_volume_ml": round(float(pre.brain_mask.sum()) * pre.working.voxel_volume_ml, 1),
        "preprocess_seconds": round(seconds, 2),
        "ignored": case.ignored,
        "ground_truth": case.sources.get("seg"),
        "warnings": case.warnings,
        "clinical_input": detect(case).as_dict(),  # what --preprocess auto would decide
    }
    if case.segmentation is not None:
        summary["ground_truth_volumes_ml"] = _label_volumes(case)
    return summary


def _label_volumes(case) -> Dict[str, float]:
    import SimpleITK as sitk
    from .io.labels import to_contiguous
    from .pipeline.measures import volumes_ml

    labels = to_contiguous(sitk.GetArrayViewFromImage(case.segmentation), case.segmentation_convention)
    return volumes_ml(labels, case.geometry.voxel_volume_ml)


def cmd_inspect(args: argparse.Namespace) -> int:
    case = _load_from_args(args, ground_truth=True)
    for warning in case.warnings:
        _progress(f"warning: {warning}")
    print(json.dumps(describe_case(case), indent=2))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .io.atomic import staged_folder
    from .models.openvino_engine import check_engine_settings
    from .pipeline.analysis import analyze
    from .reporting.render3d import prestart_render
    from .reporting.writers import write_contract_files

    check_engine_settings()  # a misspelt $GLIOMA_ANALYSIS_ENGINE / _PRECISION stops the run before the case is read
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GliomaAnalysisError(f"{out}: exists and is not a folder; --out takes a folder")
    prestart_render()  # the report's 3D view gets VTK and its OpenGL context ready while the case is analysed
    case = _load_from_args(args)
    for warning in case.warnings:
        _progress(f"warning: {warning}")
    _progress(f"case {case.case_id}: {', '.join(case.present)} present"
              + (f", missing {', '.join(case.missing)}" if case.missing else ""))
    result = analyze(case, model_dir=args.model_dir, device=args.device, fast=args.fast, classify=not args.no_classify,
                     uncertainty=not args.no_uncertainty, progress=_progress, preprocessing=args.preprocess,
                     clinical_backend=args.clinical_backend, single_model=args.single_model,
                     wait=False)  # the classifiers finish while the maps are written
    with staged_folder(out) as staging:  # one rename: an interruption leaves no new folder, a failure nothing new
        write_contract_files(result, staging, convention=args.labels, dicom_seg=args.dicom_seg)
        if args.save_registered:
            from .preprocessing.clinical import write_registered
            write_registered(result.images, staging)
    volumes = result.volumes_ml
    _progress(f"written to {args.out}: WT {volumes['wt']:.1f} mL, TC {volumes['tc']:.1f} mL, ET {volumes['et']:.1f} mL")
    print(json.dumps({"case_id": result.case_id, "out": str(args.out), "volumes_ml": volumes}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .environment import environment_text

    print(environment_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Embedded phantom case -> full analysis with the shipped model -> contract files + ground-truth Dice."""
    import SimpleITK as sitk
    from .pipeline.analysis import analyze
    from .io.case import load_case
    from .io.labels import regions, to_contiguous
    from .pipeline.measures import dice
    from .synthetic.phantom import write_cohort
    from .reporting.writers import write_outputs
    from .models.openvino_engine import check_engine_settings

    check_engine_settings()  # a misspelt $GLIOMA_ANALYSIS_ENGINE / _PRECISION stops the demo before its folder is made
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=out))
    try:
        _progress("generating the embedded phantom case (synthetic, not real data)")
        write_cohort(staging / "input", 1, seed=DEMO_SEED)
        case_dir = next(p for p in (staging / "input").iterdir() if p.is_dir())
        case = load_case(case_dir)
        result = analyze(case, device=args.device, fast=args.fast, classify=not args.no_classify, progress=_progress)
        truth = regions(to_contiguous(sitk.GetArrayFromImage(case.segmentation)))
        predicted = regions(sitk.GetArrayFromImage(result.labels))
        summary = {
            "case_id": result.case_id,
            "note": "synthetic phantom, not real data. " + RESEARCH_USE,
            "volumes_ml": result.volumes_ml,
            "ground_truth_volumes_ml": _label_volumes(case),
            "dice_vs_phantom_truth": {r: round(dice(predicted[r], truth[r]), 4) for r in ("wt", "tc", "et")},
            "seconds": round(result.timings_s["total"], 2),
        }
        write_outputs(result, staging / "output")
        (staging / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    _progress(f"wrote {out / 'output'} (segmentation, probabilities, uncertainty, report.json, report.html) "
              f"and the phantom input under {out / 'input'}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import analyze_folder, merge_shards, parse_shard, summary_name

    if args.merge:
        if args.root or args.out or args.shard:
            raise GliomaAnalysisError("--merge RESULTS takes no case folder, --out or --shard")
        path = merge_shards(args.merge)
        _progress(f"merged the shard summaries into {path}")
        return 0
    if not args.root or not args.out:
        raise GliomaAnalysisError("batch needs a cohort folder and --out (or --merge RESULTS)")
    if args.jobs < 1:
        raise GliomaAnalysisError(f"--jobs must be at least 1, got {args.jobs}")
    shard = parse_shard(args.shard) if args.shard else None
    outcomes = analyze_folder(args.root, args.out, resume=args.resume, jobs=args.jobs, progress=_progress,
                              shard=shard, channels=args.channels, device=args.device, fast=args.fast,
                              model_dir=args.model_dir, preprocessing=args.preprocess,
                              clinical_backend=args.clinical_backend, classify=not args.no_classify,
                              single_model=args.single_model)
    failed = [o for o in outcomes if o.status == "failed"]
    _progress(f"{len(outcomes) - len(failed)} of {len(outcomes)} case(s) ok, {len(failed)} failed; "
              f"summary in {Path(args.out) / summary_name(shard)}")
    return 1 if failed else 0


def cmd_install_model(args: argparse.Namespace) -> int:
    from .models.model_store import download_model

    card = download_model(args.name, args.card_url, args.weights_url)
    _progress(f"installed model '{args.name}' into {card.parent} (sha256 checked)")
    return 0


def cmd_fetch_clinical_models(args: argparse.Namespace) -> int:
    from .preprocessing.brainles_backend import fetch_models

    where = fetch_models(progress=_progress)
    _progress(f"installed the BrainLes atlases ({where['atlases']}) and HD-BET weights ({where['hd_bet']})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .reporting.longitudinal import compare, comparison_figure, comparison_text

    result = compare(Path(args.out_a), Path(args.out_b))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compare-", dir=out))
    try:
        (staging / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (staging / "compare.txt").write_text(comparison_text(result) + "\n")
        (staging / "compare.png").write_bytes(comparison_figure(result))
        for name in ("compare.json", "compare.txt", "compare.png"):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(comparison_text(result))
    _progress(f"wrote compare.json, compare.txt and compare.png to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glioma-analysis", description=f"Glioma analysis from multimodal MRI. "
                                     f"{RESEARCH_USE}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{analyze,batch,compare,demo,phantom,inspect,info,install-model,"
                                        "fetch-clinical-models}")

    phantom = sub.add_parser("phantom", help="write synthetic glioma phantoms (BraTS 2021 layout + labels.csv)")
    phantom.add_argument("--out", required=True, help="output folder")
    phantom.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z"),
                         help="voxels (default 240 240 155, as BraTS)")
    phantom.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SX", "SY", "SZ"),
                         help="voxel spacing in mm (default 1 1 1)")
    phantom.set_defaults(func=cmd_phantom)

    inspect = sub.add_parser("inspect", help="load a case and print what was found, its geometry and warnings")
    _add_case_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect)

    analyze = sub.add_parser("analyze", help="segment a case and write the output contract files")
    _add_case_arguments(analyze)
    analyze.add_argument("--out", required=True, help="output folder")
    _add_run_arguments(analyze)
    analyze.add_argument("--labels", choices=("brats2021", "brats2023"), default="brats2021",
                         help="label values written: brats2021 (ET=4, default) or brats2023 (ET=3)")
    analyze.add_argument("--no-uncertainty", action="store_true", help="no MC-dropout (flip TTA only)")
    analyze.add_argument("--model-dir", help="folder holding glioma_seg.safetensors + .json (default: bundled)")
    _add_preprocess_arguments(analyze)
    analyze.add_argument("--save-registered", action="store_true",
                         help="also write registered/<modality>.nii.gz: every input on the reference grid, "
                              "co-registered when the clinical pipeline ran (for inspection)")
    analyze.add_argument("--dicom-seg", action="store_true",
                         help="also write segmentation.seg.dcm (DICOM SEG) and measurements.sr.dcm (DICOM SR, "
                              "TID 1500: the subregion volumes); with dicom_source/ for non-DICOM input")
    analyze.set_defaults(func=cmd_analyze)

    batch = sub.add_parser("batch", help="analyse every case under a folder into OUT/<case>/ with summary.csv")
    batch.add_argument("root", nargs="?", help="folder holding case folders (searched recursively)")
    batch.add_argument("--out", help="output folder")
    batch.add_argument("--shard", metavar="K/N", help="analyse only shard K of N (a SLURM array task, a Dask job; "
                       "every shard sees the same cohort) and write summary-shard-K-of-N.csv")
    batch.add_argument("--merge", metavar="RESULTS", help="rebuild RESULTS/summary.csv from the shards' summaries")
    batch.add_argument("--resume", action="store_true", help="skip cases completed by an earlier run")
    batch.add_argument("--jobs", type=int, default=1, help="cases analysed in parallel (default 1)")
    batch.add_argument("--model-dir", help="folder holding glioma_seg.safetensors + .json (default: bundled)")
    _add_channels_argument(batch)
    _add_run_arguments(batch)
    _add_preprocess_arguments(batch)
    batch.set_defaults(func=cmd_batch)

    install = sub.add_parser("install-model", help="download a model (https only) into the user cache")
    install.add_argument("name", help="model name, e.g. glioma_seg")
    install.add_argument("--card-url", required=True, help="https URL of the model card (JSON, holds the sha256)")
    install.add_argument("--weights-url", required=True, help="https URL of the safetensors weights")
    install.set_defaults(func=cmd_install_model)

    fetch = sub.add_parser("fetch-clinical-models", help="download the SRI24 atlas and HD-BET weights BrainLes needs "
                           "(extra [clinical]; the one step of the clinical pipeline that uses the network)")
    fetch.set_defaults(func=cmd_fetch_clinical_models)

    comparison = sub.add_parser("compare", help="volume change and ET bidimensional product between two analyses")
    comparison.add_argument("out_a", help="output folder of the earlier analysis")
    comparison.add_argument("out_b", help="output folder of the later analysis")
    comparison.add_argument("--out", default="glioma-compare", help="where to write compare.* (default ./glioma-compare)")
    comparison.set_defaults(func=cmd_compare)

    info = sub.add_parser("info", help="print what an analysis here would run: version, CPU, the segmentation "
                          "network's engine, precision and threads, the shipped models, the cache folders")
    info.set_defaults(func=cmd_info)
    demo = sub.add_parser("demo", help="run the main job on an embedded phantom case")
    demo.add_argument("--out", default="glioma-demo", help="output folder (default ./glioma-demo)")
    _add_run_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _terminate(signum, frame) -> None:
    """SIGTERM behaves like Ctrl-C: staging folders are removed on the way out."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args))
    except GliomaAnalysisError as exc:
        print(f"glioma-analysis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glioma-analysis: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"glioma-analysis: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def console_script() -> None:
    """The ``glioma-analysis`` command: :func:`main`, then exit at once. Every output is written and closed (outputs
    are staged and renamed before main returns), so the interpreter's teardown (about 1 s of freeing torch, ONNX
    Runtime and VTK state, which the operating system frees anyway) is skipped."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_script()
