"""Training scripts end a user mistake (missing folder, bad config, no cases found) with one line, no traceback."""
import subprocess
import sys

import pytest

from training.common.datasets import TrainingDataError, discover_cases, require_cases


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def setup_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text("case_id,grade\n")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "pack.json").write_text('{"format": "something-else"}')
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (("training.segmentation.train_segmentation", "--config", "{tmp}/bad.yaml", "--run-dir", "{tmp}/run"),
     "bad.yaml: unknown key(s) stepz"),
    (("training.segmentation.train_segmentation", "--run-dir", "{tmp}/run", "--data", "{tmp}/missing"),
     "no labelled cases found under"),
    (("training.slice_grade.train_slice_grade", "--out", "{tmp}/run", "--real-roots", "{tmp}/missing"),
     "missing/labels.csv: cannot read label table"),
    (("training.slice_grade.train_slice_grade", "--out", "{tmp}/run", "--real-roots", "{tmp}/empty",
      "--n-phantoms", "0"), "label table is empty"),
    (("training.slice_grade.train_slice_grade", "--out", "{tmp}/run", "--all-real"), "give the cross-validation's"),
    (("training.slice_grade.train_slice_grade", "--out", "{tmp}/run", "--all-real", "--cv-report", "{tmp}/none.json"),
     "none.json: file not found"),
    (("training.slice_grade.cross_validate", "--run-dir", "{tmp}/run", "--folds", "5"), "--folds 5: each fold"),
    (("training.segmentation.evaluate", "{tmp}", "{tmp}/missing"), "missing: data folder not found"),
    (("training.segmentation.train_segmentation", "--run-dir", "{tmp}/run", "--data", "{tmp}/pack"),
     "pack: not a training pack of format"),
    (("training.segmentation.cross_validate", "--run-dir", "{tmp}/run", "--data", "{tmp}/pack"),
     "pack is a training pack"),
    (("training.segmentation.cross_validate", "--run-dir", "{tmp}/run", "--report-only", "--no-report"),
     "--report-only and --no-report exclude each other"),
    (("training.segmentation.cross_validate", "--run-dir", "{tmp}/run", "--published", "{tmp}/none.json"),
     "none.json: cannot read the published report (No such file or directory)"),
    (("training.segmentation.cross_validate", "--run-dir", "{tmp}/run", "--published", "{tmp}/bad.yaml"),
     "bad.yaml: not a segmentation cross-validation report (not JSON)"),
])
def test_training_scripts_end_user_mistakes_in_one_line(setup_files, args, message):
    result = _run(*(a.format(tmp=setup_files) for a in args))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (setup_files / "run").exists()


@pytest.mark.parametrize("network,message", [('{"fusion": "late"}', "fusion must be one of"), ("{widths", "--network")])
def test_a_bad_network_override_ends_in_one_line_before_the_run_folder_exists(tmp_path, network, message):
    result = _run("training.segmentation.train_segmentation", "--run-dir", str(tmp_path / "run"), "--network", network)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode != 0 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_discovery_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="data folder not found"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "case_a").mkdir()
    (tmp_path / "case_a" / "notes.txt").write_text("no images")
    assert discover_cases(tmp_path) == []
    with pytest.raises(TrainingDataError, match="no labelled case found"):
        require_cases([tmp_path])
