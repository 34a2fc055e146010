"""Pure helpers of the Slicer module: node names -> modalities, the CLI command line, progress-line parsing,
table rows from a report, and segment terminology. Nothing here imports slicer, qt or vtk."""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from GliomaAnalysisLib.modalities import MODALITIES, classify_text

PROGRESS_PREFIX = "[glioma-analysis] "
ERROR_PREFIX = "glioma-analysis: error: "

# label value in segmentation.nii.gz (BraTS 2021) -> segment name, RGB colour (0-1), SNOMED CT type (code, meaning)
SEGMENTS = (
    (1, "NCR", (0.85, 0.2, 0.2), ("6574001", "Necrosis")),
    (2, "ED", (0.2, 0.75, 0.3), ("79654002", "Edema")),
    (4, "ET", (1.0, 0.85, 0.1), ("108369006", "Neoplasm")),
)
CATEGORY = ("49755003", "Morphologically Abnormal Structure")
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def modality_for_node_name(name: str) -> Optional[str]:
    """The modality key a volume node name denotes (same rules as file names), or None."""
    guess = classify_text(name)
    return guess if guess in MODALITIES else None


def assign_nodes(names: Iterable[str]) -> Dict[str, str]:
    """Modality -> first node name that denotes it (in the given order)."""
    assigned: Dict[str, str] = {}
    for name in names:
        modality = modality_for_node_name(name)
        if modality and modality not in assigned:
            assigned[modality] = name
    return assigned


def build_command(python: str, inputs: Dict[str, str], out_dir: str, device: str = "auto", fast: bool = False,
                  uncertainty: bool = True, labels: str = "brats2021") -> List[str]:
    """The command line that runs the library's CLI on written input files (modality -> path)."""
    if not inputs:
        raise ValueError("at least one input volume is needed")
    command = [python, "-m", "GliomaAnalysisLib.cli", "analyze"]
    for modality in MODALITIES:
        if modality in inputs:
            command += [f"--{modality}", inputs[modality]]
    command += ["--out", out_dir, "--device", device, "--labels", labels]
    if fast:
        command.append("--fast")
    if not uncertainty:
        command.append("--no-uncertainty")
    return command


_STAGES = (("loading", 0.05), ("case ", 0.08), ("preprocessing", 0.12), ("memory estimate", 0.15),
           ("segmenting", 0.2), ("mapping results back", 0.85), ("done", 1.0))
_PASS = re.compile(r"network pass (\d+)/(\d+)")


def parse_progress(line: str) -> Tuple[Optional[float], Optional[str], Optional[str]]:
    """(fraction done or None, message or None, error or None) from one stderr line of the CLI."""
    line = line.rstrip("\n")
    if line.startswith(ERROR_PREFIX):
        return None, None, line[len(ERROR_PREFIX):]
    if not line.startswith(PROGRESS_PREFIX):
        return None, None, None
    message = line[len(PROGRESS_PREFIX):]
    match = _PASS.search(message)
    if match:
        done, total = int(match.group(1)), int(match.group(2))
        return 0.2 + 0.6 * (done - 1) / max(1, total), message, None
    for stage, fraction in _STAGES:
        if message.startswith(stage):
            return fraction, message, None
    return None, message, None


def table_rows(report: Dict) -> List[Tuple[str, str, str]]:
    """(item, value, uncertainty) rows for the results table: volumes, ratios, every prediction."""
    rows = [(f"{k.upper()} volume (mL)", f"{v:.2f}", "") for k, v in report["volumes_ml"].items()]
    rows += [(f"{k.upper()} fraction of WT", f"{v:.3f}", "") for k, v in report["ratios"].items()]
    for task, value in report["predictions"].items():
        if value is None:
            rows.append((task, "not available", ""))
        else:
            rows.append((task, f"{value['label']} (p={value['probability']:.2f})", f"{value['uncertainty']:.3f}"))
    fusion = report.get("mgmt_late_fusion")
    if fusion:
        rows.append(("MGMT late fusion", f"p={fusion['fused']:.2f}", ""))
    grade = report.get("slice_grade")
    if grade:
        rows.append(("slice grade (attention)", f"p(HGG)={grade['attention']:.2f}", f"{grade['n_slices']} slices"))
    summary = report.get("uncertainty") or {}
    if "mean_in_tumor" in summary:
        rows.append(("mean voxel uncertainty in tumor", f"{summary['mean_in_tumor']:.3f}", ""))
    return rows


def terminology_entry(code: str, meaning: str) -> str:
    """Slicer's segment terminology tag for a SNOMED CT type in the abnormal-structure category."""
    return (f"{TERMINOLOGY_CONTEXT}~SCT^{CATEGORY[0]}^{CATEGORY[1]}~SCT^{code}^{meaning}~^^~"
            f"{ANATOMIC_CONTEXT}~^^~^^")


def terminology_json(segments: Sequence = SEGMENTS) -> Dict:
    """The shipped ``GliomaAnalysis.term.json`` (Slicer's terminology context format) for the three segments."""
    types = [{"CodingSchemeDesignator": "SCT", "CodeValue": code, "CodeMeaning": meaning,
              "recommendedDisplayRGBValue": [int(round(255 * c)) for c in colour], "showAnatomy": "false"}
             for _, _, colour, (code, meaning) in segments]
    return {"SegmentationCategoryTypeContextName": "GliomaAnalysis glioma subregions",
            "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
            "SegmentationCodes": {"Category": [{"CodingSchemeDesignator": "SCT", "CodeValue": CATEGORY[0],
                                                "CodeMeaning": CATEGORY[1], "showAnatomy": "false", "Type": types}]}}
