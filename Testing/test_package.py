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
