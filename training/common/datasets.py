"""Discovery of labelled training cases and their case-level labels."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from GliomaAnalysisLib.io.case import find_modality_files
from GliomaAnalysisLib.errors import GliomaAnalysisError
from GliomaAnalysisLib.io.modalities import SEGMENTATION


@dataclass
class CaseFolder:
    """A case folder with its modality files and ground-truth segmentation file."""

    case_id: str
    folder: Path
    files: Dict[str, Path]
    segmentation: Path


def discover_cases(root: "str | os.PathLike[str]") -> List[CaseFolder]:
    """Every sub-folder of ``root`` holding at least one modality and a segmentation, sorted by name."""
    cases = []
    for folder in sorted(Path(root).iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            found = find_modality_files(folder)
        except GliomaAnalysisError:
            continue
        if SEGMENTATION in found:
            files = {k: v for k, v in found.items() if k != SEGMENTATION}
            cases.append(CaseFolder(folder.name, folder, files, found[SEGMENTATION]))
    return cases


def read_case_labels(path: "str | os.PathLike[str]", id_column: str = "case_id") -> Dict[str, Dict[str, Optional[str]]]:
    """Rows of a case-level label table keyed by ``id_column``; blank or NA cells become None."""
    table: Dict[str, Dict[str, Optional[str]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            clean = {k: (v.strip() if v and v.strip() not in ("NA", "N/A", "nan") else None) for k, v in row.items()}
            table[row[id_column]] = clean
    return table
