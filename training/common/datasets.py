"""Discovery of labelled training cases and their case-level labels."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from GliomaAnalysisLib.errors import GliomaAnalysisError
from GliomaAnalysisLib.io.case import scan_folder

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""``../shared/data`` beside the checkout: the real, expert-labelled cases (absent in a user's clone)."""
BRATS18 = SHARED_DATA / "brats18"
REAL_DATA_ROOTS = [str(BRATS18), str(SHARED_DATA / "brats-extra")]
"""All 31 real labelled cases: the default data of the segmentation training and cross-validation."""
DEFAULT_CACHE = str(Path.home() / ".cache" / "glioma-analysis" / "training")
"""Where the training scripts keep preprocessed working-grid arrays (``--cache``)."""


@dataclass
class CaseFolder:
    """A case folder with its modality files and ground-truth segmentation file."""

    case_id: str
    folder: Path
    files: Dict[str, Path]
    segmentation: Path


class TrainingDataError(GliomaAnalysisError):
    """A training data folder is missing or holds no labelled case."""


def discover_cases(root: "str | os.PathLike[str]") -> List[CaseFolder]:
    """Every sub-folder of ``root`` holding at least one modality and a ground-truth file (``<case>_seg``), sorted
    by name. Masks and other label maps beside them are not taken for the ground truth (see
    :func:`GliomaAnalysisLib.io.case.scan_folder`). A missing ``root`` is a :class:`TrainingDataError`."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"{root}: data folder not found")
    cases = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            scan = scan_folder(folder)
        except GliomaAnalysisError:
            continue
        if scan.inputs and scan.ground_truth is not None:
            cases.append(CaseFolder(folder.name, folder, dict(scan.inputs), scan.ground_truth))
    return cases


def require_cases(roots: Sequence["str | os.PathLike[str]"]) -> List[CaseFolder]:
    """The labelled cases of every root; a missing root or none found at all is a :class:`TrainingDataError`."""
    cases = [case for root in roots for case in discover_cases(root)]
    if not cases:
        raise TrainingDataError(f"{', '.join(str(r) for r in roots)}: no labelled case found (expected one folder "
                                f"per case holding modality files and <case>_seg.nii.gz)")
    return cases


def read_case_labels(path: "str | os.PathLike[str]", id_column: str = "case_id") -> Dict[str, Dict[str, Optional[str]]]:
    """Rows of a case-level label table keyed by ``id_column``; blank or NA cells become None."""
    table: Dict[str, Dict[str, Optional[str]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            clean = {k: (v.strip() if v and v.strip() not in ("NA", "N/A", "nan") else None) for k, v in row.items()}
            table[row[id_column]] = clean
    return table


def case_folders(roots: Sequence["str | os.PathLike[str]"]) -> Dict[str, CaseFolder]:
    """case id -> CaseFolder of every labelled case under those of ``roots`` that exist."""
    return {c.case_id: c for root in roots if Path(root).is_dir() for c in discover_cases(root)}
