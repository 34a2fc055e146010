"""Pure helpers of the Slicer module: node names -> modalities, the CLI command line, progress-line parsing,
table rows from a report, segment terminology, and the SampleData registration (arguments, the synthetic sample
case). Nothing here imports slicer, qt or vtk."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from GliomaAnalysisLib.io.modalities import MODALITIES, classify_text

PROGRESS_PREFIX = "[glioma-analysis] "
ERROR_PREFIX = "glioma-analysis: error: "

# label value in segmentation.nii.gz (BraTS 2021) -> segment name, RGB colour (0-1), SNOMED CT type (code, meaning);
# written into Resources/GliomaAnalysis.term.json (terminology_json), which the scene layer loads and names from
SEGMENTS = (
    (1, "NCR", (0.85, 0.2, 0.2), ("6574001", "Necrosis")),
    (2, "ED", (0.2, 0.75, 0.3), ("79654002", "Edema")),
    (4, "ET", (1.0, 0.85, 0.1), ("108369006", "Neoplasm")),
)
# SCT 49755003 as DICOM (CID 7150) and Slicer's own terminology name it
CATEGORY = ("49755003", "Morphologically Altered Structure")
STDERR_TAIL_LINES = 20  # the last child-process lines shown when a run fails without a one-line error


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
                  uncertainty: bool = True, labels: str = "brats2021", classify: bool = True,
                  preprocess: str = "auto", save_registered: bool = False) -> List[str]:
    """The command line that runs the library's CLI on written input files (modality -> path).

    preprocess: ``auto`` | ``none`` | ``brats`` (clinical input); save_registered: also write the co-registered
    inputs into ``out_dir/registered/``.
    """
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
    if not classify:
        command.append("--no-classify")
    if preprocess != "auto":
        command += ["--preprocess", preprocess]
    if save_registered:
        command.append("--save-registered")
    return command


_STAGES = (("loading", 0.05), ("case ", 0.08), ("clinical input", 0.1), ("preprocessing", 0.12),
           ("memory estimate", 0.15), ("segmenting", 0.2), ("classifying", 0.8), ("mapping results back", 0.8),
           ("done", 1.0))
"""Fraction done at each CLI message; the classifiers and the mapping back run side by side (same fraction)."""
_PASS = re.compile(r"network pass(?:es)? (\d+)(?:-\d+)?/(\d+)")  # "pass 2/4"; side by side: "passes 1-2/2"
_FINE_STAGE = ("fine stage", 0.65, 0.8)
"""The segmentation's second stage (its messages start "fine stage: "; its passes come after the coarse network's,
whose last one starts at 0.65 at most with up to 4 passes) runs from 0.65 to the mapping back."""


def parse_progress(line: str) -> Tuple[Optional[float], Optional[str], Optional[str]]:
    """(fraction done or None, message or None, error or None) from one stderr line of the CLI."""
    line = line.rstrip("\n")
    if line.startswith(ERROR_PREFIX):
        return None, None, line[len(ERROR_PREFIX):]
    if not line.startswith(PROGRESS_PREFIX):
        return None, None, None
    message = line[len(PROGRESS_PREFIX):]
    prefix, start, stop = _FINE_STAGE
    if message.startswith(prefix):
        match = _PASS.search(message)
        done, total = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        return start + (stop - start) * (done - 1) / max(1, total), message, None
    match = _PASS.search(message)
    if match:
        done, total = int(match.group(1)), int(match.group(2))
        return 0.2 + 0.6 * (done - 1) / max(1, total), message, None
    for stage, fraction in _STAGES:
        if message.startswith(stage):
            return fraction, message, None
    return None, message, None


def _evidence(value: Dict) -> str:
    """The evidence level of one prediction (``evidence``: a string, or a dict with ``level``), or ""."""
    evidence = value.get("evidence")
    if isinstance(evidence, dict):
        evidence = evidence.get("level")
    return "" if evidence is None else str(evidence)


_STATES = (("loading", "Starting"), ("case ", "Starting"), ("clinical input", "Registering"),
           ("preprocessing", "Starting"), ("segmenting", "Segmenting"), ("network pass", "Segmenting"),
           ("fine stage", "Segmenting"), ("classifying", "Classifying"), ("mapping results back", "Classifying"))


def run_state(message: str) -> Optional[str]:
    """The run state a CLI progress message starts (Starting / Registering / Segmenting / Classifying), or None.
    The widget adds Loading, Done, Cancelled and Failed itself."""
    for prefix, state in _STATES:
        if message.startswith(prefix):
            return state
    return None


def table_rows(report: Dict) -> List[Tuple[str, str, str, str]]:
    """(item, value, uncertainty, evidence) rows for the results table: volumes, ratios, every prediction (with its
    evidence level when the report carries one)."""
    rows = [(f"{k.upper()} volume (mL)", f"{v:.2f}", "", "") for k, v in report["volumes_ml"].items()]
    rows += [(f"{k.upper()} fraction of WT", f"{v:.3f}", "", "") for k, v in report["ratios"].items()]
    for task, value in report["predictions"].items():
        if value is None:
            rows.append((task, "not available", "", ""))
        else:
            item = f"{task} (from volumes)" if value.get("basis", "").startswith("segmentation volumes") else task
            rows.append((item, f"{value['label']} (p={value['probability']:.2f})", f"{value['uncertainty']:.3f}",
                         _evidence(value)))
    fusion = report.get("mgmt_late_fusion")
    if fusion:
        spread = fusion.get("uncertainty") or 0.0
        rows.append(("MGMT late fusion: P(methylated)", f"{fusion['fused']:.2f}", f"{spread:.3f}", _evidence(fusion)))
        rows += [(f"MGMT {modality.upper()} model", f"{p:.2f}", f"weight {fusion['weights'].get(modality, 0):.2f}", "")
                 for modality, p in fusion["per_modality"].items() if p is not None]
    grade = report.get("slice_grade")
    if grade and grade.get("n_slices"):
        spread = grade.get("uncertainty") or 0.0
        for method in ("attention", "soft", "majority"):
            detail = f"{spread:.3f}" if method == "attention" else f"{grade['n_slices']} slices"
            rows.append((f"slice grade ({method}): P(HGG)", f"{grade[method]:.2f}", detail,
                         _evidence(grade) if method == "attention" else ""))
    elif grade:
        rows.append(("slice grade", "not available", grade.get("reason") or "", ""))
    summary = report.get("uncertainty") or {}
    if "mean_in_tumor" in summary:
        rows.append(("mean voxel uncertainty in tumor", f"{summary['mean_in_tumor']:.3f}", "", ""))
    return rows


def stderr_tail(lines: Sequence[str], count: int = STDERR_TAIL_LINES) -> str:
    """The last ``count`` non-empty lines of a child's stderr, for the message of a failed run."""
    kept = [line.rstrip("\n") for line in lines if line.strip()]
    return "\n".join(kept[-count:])


def failure_message(returncode: int, error: Optional[str], lines: Sequence[str]) -> Optional[str]:
    """What a finished run reports: None on success, the CLI's one-line error, else the exit status and the last
    lines of its stderr (a traceback, an import error, a crash)."""
    if returncode == 0:
        return None
    if error:
        return error
    tail = stderr_tail(lines)
    message = f"The analysis stopped with exit status {returncode}."
    return f"{message} Last lines of its log:\n{tail}" if tail else message


def common_transform(transform_ids: Dict[str, Optional[str]]) -> Optional[str]:
    """The one parent-transform node ID all inputs share (None: none), or ValueError naming the inputs that differ:
    the CLI sees the voxels in each node's local coordinates, so inputs under different transforms would be
    misaligned (harden them first)."""
    distinct = set(transform_ids.values())
    if len(distinct) <= 1:
        return next(iter(distinct), None)
    listing = ", ".join(f"{modality} under {tid or 'no transform'}" for modality, tid in transform_ids.items())
    raise ValueError(f"The inputs are under different transforms ({listing}). Harden the transforms first "
                     f"(Data module: right-click the volume -> Harden transform) or put all inputs under one.")


def popen_options(os_name: str = os.name) -> Dict:
    """Keyword arguments of subprocess.Popen for the child: its own process group (Cancel kills the tree) and, on
    Windows, no console window (CREATE_NO_WINDOW and a hidden STARTUPINFO)."""
    import subprocess
    if os_name == "posix":
        return {"start_new_session": True}
    startupinfo = subprocess.STARTUPINFO()
    startupinfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    startupinfo.wShowWindow = 0  # SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW,
            "startupinfo": startupinfo}


def terminology_json(segments: Sequence = SEGMENTS) -> Dict:
    """The shipped ``GliomaAnalysis.term.json`` (Slicer's terminology context format) for the three segments; each
    type's ``3dSlicerLabel`` is the segment name Slicer shows."""
    types = [{"CodingSchemeDesignator": "SCT", "CodeValue": code, "CodeMeaning": meaning, "3dSlicerLabel": name,
              "recommendedDisplayRGBValue": [int(round(255 * c)) for c in colour], "showAnatomy": "false"}
             for _, name, colour, (code, meaning) in segments]
    return {"SegmentationCategoryTypeContextName": "GliomaAnalysis glioma subregions",
            "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
            "SegmentationCodes": {"Category": [{"CodingSchemeDesignator": "SCT", "CodeValue": CATEGORY[0],
                                                "CodeMeaning": CATEGORY[1], "showAnatomy": "false", "Type": types}]}}


# --- sample data (registered with Slicer's SampleData module) --------------------------------------------------------
SAMPLE_CATEGORY = "GliomaAnalysis"
SAMPLE_NAME = "GliomaPhantom"  # the synthetic case: sample name, case id, and file / node name prefix
HOSTED_SAMPLE_NAME = "GliomaCase"  # default sample name of a published (hosted) case
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_SHA256 = re.compile(r"SHA256:[0-9a-f]{64}")


def sample_file_names(case_id: str = SAMPLE_NAME) -> Dict[str, str]:
    """Modality -> file name of a case written by ``phantom.write_phantom`` (``<case>_<modality>.nii.gz``)."""
    return {modality: f"{case_id}_{modality}.nii.gz" for modality in MODALITIES}


def node_name_for_file(file_name: str) -> str:
    """The node name a sample file loads as: its name without the volume extension."""
    for suffix in VOLUME_SUFFIXES:
        if file_name.lower().endswith(suffix):
            return file_name[:-len(suffix)]
    return file_name


def check_hosted_sample(hosted: Dict) -> None:
    """Raise ValueError (one line) unless ``hosted`` reads ``{"uris": [...], "fileNames": [...], "checksums":
    ["SHA256:<64 lowercase hex>", ...]}`` (equal lengths, https URLs) with one file per modality, named so that
    the module's selectors recognise it (``..._t1ce.nii.gz``, ``...-t2f.nii.gz``, ...)."""
    for key in ("uris", "fileNames", "checksums"):
        if not isinstance(hosted.get(key), (list, tuple)) or not hosted[key]:
            raise ValueError(f"HOSTED_SAMPLE: '{key}' must be a non-empty list")
    uris, names, checksums = hosted["uris"], hosted["fileNames"], hosted["checksums"]
    if not len(uris) == len(names) == len(checksums):
        raise ValueError(f"HOSTED_SAMPLE: uris, fileNames and checksums differ in length "
                         f"({len(uris)}, {len(names)}, {len(checksums)})")
    for uri in uris:
        if not str(uri).startswith("https://"):
            raise ValueError(f"HOSTED_SAMPLE: {uri}: only https URLs are allowed")
    for checksum in checksums:
        if not _SHA256.fullmatch(str(checksum)):
            raise ValueError(f"HOSTED_SAMPLE: {checksum!r}: checksums read 'SHA256:' and 64 lowercase hex digits")
    modalities = [modality_for_node_name(node_name_for_file(name)) for name in names]
    for name, modality in zip(names, modalities):
        if modality is None:
            raise ValueError(f"HOSTED_SAMPLE: {name}: no modality (t1, t1ce, t2, flair) recognised in the file name")
    repeated = sorted({m for m in modalities if modalities.count(m) > 1})
    if repeated:
        raise ValueError(f"HOSTED_SAMPLE: more than one file for {', '.join(repeated)}")


def sample_data_sources(cache_folder: "str | os.PathLike[str]", thumbnail: Optional[str] = None,
                        hosted: Optional[Dict] = None) -> List[Dict]:
    """Keyword arguments of SampleData's ``registerCustomSampleDataSource``, one dict per sample.

    First the synthetic phantom, always: its files are generated into ``cache_folder`` by the module's
    ``customDownloader`` (the caller adds it), so its ``uris`` are only the ``file://`` addresses of those files.
    Then, when ``hosted`` is given (see ``check_hosted_sample``), the published case, which SampleData downloads
    and checks (SHA256) itself. ``loadFileTypes`` is the current Slicer keyword (see ``registration_keywords``).
    """
    files = sample_file_names()
    case_dir = Path(cache_folder).absolute() / SAMPLE_NAME
    sources = [{"category": SAMPLE_CATEGORY, "sampleName": SAMPLE_NAME,
                "uris": [(case_dir / files[m]).as_uri() for m in MODALITIES],
                "fileNames": [files[m] for m in MODALITIES],
                "nodeNames": [node_name_for_file(files[m]) for m in MODALITIES],
                "thumbnailFileName": thumbnail, "loadFileTypes": ["VolumeFile"] * len(MODALITIES)}]
    if hosted is not None:
        check_hosted_sample(hosted)
        names = [str(name) for name in hosted["fileNames"]]
        sources.append({"category": SAMPLE_CATEGORY, "sampleName": hosted.get("sampleName", HOSTED_SAMPLE_NAME),
                        "uris": [str(uri) for uri in hosted["uris"]], "fileNames": names,
                        "nodeNames": [node_name_for_file(name) for name in names],
                        "checksums": [str(c) for c in hosted["checksums"]], "thumbnailFileName": thumbnail,
                        "loadFileTypes": ["VolumeFile"] * len(names)})
    return sources


def registration_keywords(arguments: Dict, accepted: Iterable[str]) -> Dict:
    """``arguments`` adapted to the running Slicer's ``registerCustomSampleDataSource`` parameter names
    (``accepted``): Slicer 5.8 takes ``loadFileType``, later versions ``loadFileTypes``. Any other keyword the
    running Slicer lacks is a ValueError rather than a silently dropped setting."""
    accepted = set(accepted)
    keywords = dict(arguments)
    if "loadFileTypes" in keywords and "loadFileTypes" not in accepted:
        keywords["loadFileType"] = keywords.pop("loadFileTypes")
    unknown = sorted(set(keywords) - accepted)
    if unknown:
        raise ValueError(f"registerCustomSampleDataSource takes no {', '.join(unknown)} in this Slicer")
    return keywords


def write_sample_phantom(folder: "str | os.PathLike[str]", size: Optional[Tuple[int, int, int]] = None,
                         spacing: Optional[Tuple[float, float, float]] = None) -> Dict[str, str]:
    """Write the embedded case of ``glioma-analysis demo`` (synthetic, never real data) as
    ``<folder>/GliomaPhantom/GliomaPhantom_<modality>.nii.gz``; returns modality -> path.

    size / spacing default to the demo's (BraTS grid, 1 mm). A complete earlier copy is reused; a new one is written
    into a staging folder and renamed into place, so an interrupted run leaves no partial case behind.
    """
    import dataclasses
    import shutil
    import tempfile

    from GliomaAnalysisLib.cli import DEMO_SEED
    from GliomaAnalysisLib.synthetic.phantom import BRATS_SIZE, iter_phantoms, write_phantom

    case_dir = Path(folder) / SAMPLE_NAME
    paths = {modality: case_dir / name for modality, name in sample_file_names().items()}
    if not all(path.is_file() and path.stat().st_size > 0 for path in paths.values()):
        Path(folder).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SAMPLE_NAME}-", dir=folder))
        try:
            phantom = next(iter_phantoms(1, DEMO_SEED, size or BRATS_SIZE, spacing or (1.0, 1.0, 1.0)))
            write_phantom(dataclasses.replace(phantom, case_id=SAMPLE_NAME), staging)
            if case_dir.exists():
                shutil.rmtree(case_dir)
            os.replace(staging / SAMPLE_NAME, case_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {modality: str(path) for modality, path in paths.items()}
