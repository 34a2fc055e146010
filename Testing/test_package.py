"""Package boundaries: the library stays light to import and independent of Slicer and of training/."""
import re
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "GliomaAnalysisLib"


def test_importing_the_library_loads_neither_torch_nor_slicer():
    code = ("import sys, GliomaAnalysisLib, GliomaAnalysisLib.io.case, GliomaAnalysisLib.preprocessing.preprocess, "
            "GliomaAnalysisLib.synthetic.phantom, GliomaAnalysisLib.cli; "
            "print(sorted(m for m in ('torch', 'monai', 'slicer', 'qt', 'vtk') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_library_never_imports_slicer_qt_mrml_or_training():
    forbidden = re.compile(r"^\s*(from|import)\s+(slicer|qt|ctk|vtkMRML\w*|vtk\.\w*MRML|training)\b", re.M)
    offenders = [p.name for p in LIBRARY.rglob("*.py") if forbidden.search(p.read_text())]
    assert offenders == []


STAGES = ["io", "preprocessing", "models", "pipeline", "reporting"]
"""Stages in flow order; a module may import its own stage or one to its left (errors and _version: anyone)."""


def test_imports_point_down_the_flow_only():
    relative = re.compile(r"^\s*from\s+(\.+)([\w.]*)\s+import", re.M)
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY).parts
        stage = parts[0] if len(parts) > 1 else None
        if stage is None:
            continue  # cli, batch, errors: the top may import any stage
        for dots, target in relative.findall(path.read_text()):
            if len(dots) == 1:
                continue  # same stage
            other = target.split(".")[0]
            if other in ("errors", "_version"):
                continue
            allowed = STAGES[:STAGES.index(stage) + 1] if stage in STAGES else ["io"]  # synthetic: io only
            if other not in allowed:
                offenders.append(f"{path.relative_to(LIBRARY)} imports {other}")
    assert offenders == []


def test_clinical_and_brainles_backend_do_not_import_each_other_circularly():
    backend = (LIBRARY / "preprocessing" / "brainles_backend.py").read_text()
    assert not re.search(r"from \.clinical import", backend)
