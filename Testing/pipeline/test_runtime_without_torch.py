"""Once the shipped networks are exported to the ONNX cache, a whole analysis (segmentation, every classifier,
the report) runs without importing torch (1.3 s of the run on a laptop CPU), nor scipy on skull-stripped input
(0.2-0.6 s)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

CHILD = r'''
import json, sys
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.reporting.writers import write_outputs
result = analyze(sys.argv[1], device="auto")
write_outputs(result, sys.argv[2])
print(json.dumps({"torch": "torch" in sys.modules, "scipy": "scipy" in sys.modules, "warnings": result.warnings,
                  "models": [m["name"] for m in result.models], "wt": result.volumes_ml["wt"],
                  "grade": result.predictions["grade"]["probability"], "mgmt": result.mgmt_late_fusion["fused"],
                  "slice_grade": result.slice_grade["probability"]}))
'''


def _run(case, out, cache):
    env = dict(os.environ, GLIOMA_ANALYSIS_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-c", CHILD, str(case), str(out)], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cached_analysis_never_imports_torch_and_gives_the_same_results(phantom_dir, tmp_path):
    first = _run(phantom_dir, tmp_path / "first", tmp_path / "cache")  # exports every graph (imports torch)
    graphs = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert set(graphs) == {"glioma_seg", "glioma_seg_fine", "glioma_multitask", "mgmt_fusion", "slice_grade"}
    second = _run(phantom_dir, tmp_path / "second", tmp_path / "cache")
    assert first["torch"] is True and second["torch"] is False and second["scipy"] is False
    assert first["models"] == second["models"] == ["glioma_seg", "glioma_seg_fine", "glioma_multitask", "mgmt_fusion",
                                                   "slice_grade"]
    assert not any("ONNX Runtime not used" in w for w in second["warnings"])
    for key in ("wt", "grade", "mgmt", "slice_grade"):
        assert second[key] == first[key]  # the same graphs, the same seeded masks: bit-identical
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    assert report["volumes_ml"]["wt"] == second["wt"] > 0
