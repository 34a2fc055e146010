import json
import subprocess
import sys


def test_demo_runs_the_main_job(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "demo", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary == json.loads(result.stdout)
    assert summary["missing"] == [] and summary["reference"] == "t1ce"
    assert summary["working_grid"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert all(n % 8 == 0 for n in summary["working_grid"]["shape_czyx"][1:])
    volumes = summary["ground_truth_volumes_ml"]
    assert volumes["et"] > 0 and volumes["ncr"] > 0 and volumes["ed"] > 0  # an HGG phantom
    assert abs(volumes["wt"] - (volumes["ncr"] + volumes["ed"] + volumes["et"])) < 0.05
    assert 900 < summary["brain_volume_ml"] < 2000
    assert summary["round_trip_dice_2mm"]["ed"] > 0.8
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
