import json
import subprocess
import sys

from GliomaAnalysisLib.reporting.writers import CONTRACT_FILES, LOG_FILE


def test_demo_runs_the_main_job(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "demo", "--out", str(out), "--fast"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary == json.loads(result.stdout)
    assert sorted(p.name for p in (out / "output").iterdir()) == sorted(CONTRACT_FILES + (LOG_FILE,))
    truth = summary["ground_truth_volumes_ml"]
    assert truth["et"] > 0 and truth["ncr"] > 0 and truth["ed"] > 0  # an HGG phantom
    assert summary["dice_vs_phantom_truth"]["wt"] > 0.75
    assert abs(summary["volumes_ml"]["wt"] - truth["wt"]) < 0.3 * truth["wt"]
    assert (out / "input").is_dir() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_inspect_reports_missing_modalities_and_resampling(tmp_path, phantom_dir, small_phantom):
    import SimpleITK as sitk
    flair = small_phantom.image("flair")
    flair.SetOrigin((2.5, 0.0, 0.0))
    sitk.WriteImage(flair, str(tmp_path / "moved_flair.nii.gz"))
    t1ce = phantom_dir / f"{small_phantom.case_id}_t1ce.nii.gz"
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "inspect", "--t1ce", str(t1ce),
                             "--flair", str(tmp_path / "moved_flair.nii.gz")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["missing"] == ["t1", "t2"] and summary["presence"] == [0.0, 1.0, 0.0, 1.0]
    assert "flair: origin differ" in result.stderr and summary["warnings"]


def test_the_console_script_flushes_its_output_and_keeps_the_exit_status(tmp_path, phantom_dir):
    """The command leaves with os._exit (no interpreter teardown): what it printed and its status must survive."""
    ok = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "inspect", str(phantom_dir)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and set(json.loads(ok.stdout)["inputs"]) == {"t1", "t1ce", "t2", "flair"}
    bad = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "inspect", str(tmp_path / "absent")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "glioma-analysis: error:" in bad.stderr and "absent" in bad.stderr


def test_info_says_what_an_analysis_here_runs(phantom_dir, tiny_model_dir, monkeypatch, capsys):
    """``info`` names the engine, precision and threads that analyze() then reports, and the shipped models' cards."""
    from GliomaAnalysisLib import analyze
    from GliomaAnalysisLib.cli import main
    from GliomaAnalysisLib.models.model_store import load_card

    for engine in ("auto", "onnxruntime"):
        monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", engine)
        assert main(["info"]) == 0
        info = json.loads(capsys.readouterr().out)
        network = info["segmentation_network"]
        settings = analyze(phantom_dir, model_dir=tiny_model_dir, classify=False).settings
        assert (network["engine"], network["precision"], network["threads"]) == (
            settings["engine"], settings["precision"], settings["threads"]), engine
        assert network["requested"]["GLIOMA_ANALYSIS_ENGINE"] == engine
    assert info["segmentation_network"]["engine"].startswith("onnxruntime ")
    assert info["segmentation_network"]["precision"] == "f32"
    assert info["models"]["glioma_seg"]["sha256"] == load_card("glioma_seg")["sha256"]
    assert set(info["models"]) >= {"glioma_seg", "glioma_multitask", "mgmt_fusion", "slice_grade"}
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "half")
    assert main(["info"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "glioma-analysis: error: $GLIOMA_ANALYSIS_PRECISION must be one of auto, f32, not 'half'"]
