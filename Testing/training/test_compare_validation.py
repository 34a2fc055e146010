"""compare_validation pairs two runs' final per-case validation Dice from their training logs."""
import json

import pytest

from training.segmentation.compare_validation import final_validation, main


def _log(folder, records):
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _run(root, fold_scores):
    for fold, scores in enumerate(fold_scores):
        _log(root / f"fold{fold}", [{"step": 1, "loss": 1.0, "val_dice": {"wt": 0, "tc": 0, "et": 0},
                                     "val_cases": {"stale": {"wt": 0.0, "tc": 0.0, "et": 0.0}}},
                                    {"step": 2, "loss": 0.5, "val_cases": scores}])


def test_two_runs_are_paired_on_the_cases_both_validated(tmp_path, capsys):
    _run(tmp_path / "new", [{"a": {"wt": 0.9, "tc": 0.8, "et": 0.7}}, {"b": {"wt": 0.7, "tc": 0.6, "et": 0.5},
                                                                       "c": {"wt": 0.5, "tc": 0.5, "et": 0.5}}])
    _run(tmp_path / "base", [{"a": {"wt": 0.8, "tc": 0.8, "et": 0.5}}, {"b": {"wt": 0.5, "tc": 0.6, "et": 0.5}}])
    assert set(final_validation(tmp_path / "new")) == {"a", "b", "c"}  # the last record of each fold, not "stale"
    assert final_validation(tmp_path / "new" / "fold0") == {"a": {"wt": 0.9, "tc": 0.8, "et": 0.7}}
    assert main([str(tmp_path / "new"), str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["a", "new", "0.900", "0.800", "0.700", "base", "0.800", "0.800", "0.500"]
    # differences WT 0.1 and 0.2 (mean 0.15, SE 0.05), TC 0 and 0, ET 0.2 and 0 (mean 0.1, SE 0.1)
    assert out[-1].startswith("2 cases (2 mm, argmax, one pass, all four modalities): new 0.800 / 0.700 / 0.600, "
                              "base 0.650 / 0.700 / 0.500, paired difference 0.150 / 0.000 / 0.100 "
                              "(SE 0.050 / 0.000 / 0.100)")


@pytest.mark.parametrize("which", ["new", "base"])
def test_a_run_without_per_case_validation_is_a_one_line_error(tmp_path, capsys, which):
    _run(tmp_path / "good", [{"a": {"wt": 0.9, "tc": 0.8, "et": 0.7}}])
    _log(tmp_path / "old" / "fold0", [{"step": 1, "loss": 1.0, "val_dice": {"wt": 0.5, "tc": 0.5, "et": 0.5}}])
    runs = [tmp_path / "old", tmp_path / "good"] if which == "new" else [tmp_path / "good", tmp_path / "old"]
    assert main([str(r) for r in runs]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'old'}: no finished run with per-case validation "
                                               "(log.jsonl records with val_cases)")


def test_runs_without_a_common_case_are_an_error(tmp_path, capsys):
    _run(tmp_path / "x", [{"a": {"wt": 0.9, "tc": 0.8, "et": 0.7}}])
    _run(tmp_path / "y", [{"b": {"wt": 0.9, "tc": 0.8, "et": 0.7}}])
    assert main([str(tmp_path / "x"), str(tmp_path / "y")]) == 2
    assert "validated no case in common" in capsys.readouterr().err
