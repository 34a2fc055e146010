"""Pack the preprocessed training arrays of the real cases into one small folder, to train where the NIfTI files
are not (a GPU machine that takes at most a few tens of MB).

    python -m training.segmentation.pack_arrays --out PACK            # all 31 real cases, about 29 MB
    python -m training.segmentation.train_segmentation --data PACK ...   # then trains from it like from the roots

PACK holds ``pack.json`` (format, spacing, library and target versions, intensity step, the data roots packed),
``labels.csv`` (the rows of the roots' tables: grade and source for the folds) and one ``<case>.npz`` per case: the
z-scored image as int16 in steps of 1/64 SD (rounding error at most 0.008 SD, far below the noise augmentation's),
the contiguous labels and the uint8 soft targets, exactly as cached.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from GliomaAnalysisLib import __version__
from GliomaAnalysisLib.io.atomic import staged_folder

from ..common.datasets import DEFAULT_CACHE, REAL_DATA_ROOTS, TrainingDataError
from .segmentation_data import TARGETS_VERSION, TrainingCase, load_cases

PACK_FORMAT = "glioma-analysis-training-pack-1"
INTENSITY_STEP = 1.0 / 64.0
"""SD of the z-scored image per int16 unit."""


def is_pack(root: "str | os.PathLike[str]") -> bool:
    return (Path(root) / "pack.json").is_file()


def write_pack(cases: Sequence[TrainingCase], roots: Sequence[Path], out: Path, spacing: Sequence[float]) -> None:
    """``out``/pack.json, labels.csv and one npz per case (see the module docstring), written whole or not at all
    (an existing ``out`` is replaced)."""
    with staged_folder(out, replace=True) as staging:
        _write_pack_into(staging, cases, roots, spacing)


def _write_pack_into(out: Path, cases: Sequence[TrainingCase], roots: Sequence[Path], spacing: Sequence[float]) -> None:
    for case in cases:
        scaled = np.round(case.image / INTENSITY_STEP)
        if np.abs(scaled).max() > np.iinfo(np.int16).max:
            raise TrainingDataError(f"{case.case_id}: intensities beyond +-512 SD cannot be packed")
        np.savez_compressed(out / f"{case.case_id}.npz", image=scaled.astype(np.int16), labels=case.labels,
                            soft=case.soft if case.soft is not None else np.zeros((0,), np.uint8))
    rows: List[Dict[str, str]] = []
    for root in roots:
        table = Path(root) / "labels.csv"
        if table.is_file():
            with open(table, newline="") as handle:
                rows += list(csv.DictReader(handle))
    wanted = {c.case_id for c in cases}
    rows = [r for r in rows if r["case_id"] in wanted]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns or ["case_id"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "pack.json").write_text(json.dumps({
        "format": PACK_FORMAT, "spacing": list(spacing), "library_version": __version__,
        "targets_version": TARGETS_VERSION, "intensity_step": INTENSITY_STEP,
        "cases": sorted(wanted), "sources": [str(r) for r in roots]}, indent=2))


def read_pack(root: Path, spacing: Sequence[float]) -> List[TrainingCase]:
    """The cases of a pack (sorted by id); a pack of another format, spacing or target version is an error."""
    meta = json.loads((root / "pack.json").read_text())
    if meta.get("format") != PACK_FORMAT:
        raise TrainingDataError(f"{root}: not a training pack of format {PACK_FORMAT}")
    if [float(s) for s in meta["spacing"]] != [float(s) for s in spacing] or meta["targets_version"] != TARGETS_VERSION:
        raise TrainingDataError(f"{root}: packed at {meta['spacing']} mm ({meta['targets_version']}), "
                                f"asked for {list(spacing)} mm ({TARGETS_VERSION})")
    cases = []
    for case_id in meta["cases"]:
        data = np.load(root / f"{case_id}.npz")
        image = data["image"].astype(np.float32) * np.float32(meta["intensity_step"])
        soft = data["soft"] if data["soft"].size else None
        cases.append(TrainingCase(case_id, image, data["labels"], False, soft))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the pack folder (created)")
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS, help="data roots (case folders with _seg files)")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--spacing", type=float, default=2.0, help="working-grid spacing in mm")
    args = parser.parse_args(argv)
    spacing = (args.spacing,) * 3
    roots = [Path(d) for d in args.data]
    try:
        cases = load_cases(roots, Path(args.cache), spacing,
                           progress=lambda text: print(text, file=sys.stderr, flush=True))
        if not cases:
            raise TrainingDataError(f"no labelled cases found under {', '.join(args.data)}")
        write_pack(cases, roots, Path(args.out), spacing)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"{len(cases)} cases -> {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
