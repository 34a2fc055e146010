"""Evaluation over the 15 modality combinations (training/segmentation/modality_eval.py)."""
from __future__ import annotations

import numpy as np
import torch

from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from training.segmentation.modality_eval import (combination_name, combinations, evaluate, markdown_table, presence_of,
                                    single_missing, summary, summary_table)
from training.segmentation.segmentation_data import TrainingCase


def test_fifteen_distinct_non_empty_combinations_named_like_the_seed_tables():
    subsets = combinations()
    assert len(subsets) == 15 and len(set(subsets)) == 15 and all(subsets)
    assert combination_name(subsets[0]) == "all"
    assert combination_name(("t1ce", "t2", "flair")) == "missing T1"
    assert combination_name(("t1", "t2")) == "missing T1CE & FLAIR"
    assert combination_name(("flair",)) == "only FLAIR"
    assert presence_of(("t1", "flair")).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert [len(s) for s in single_missing()] == [4, 3, 3, 3, 3]


def test_evaluate_scores_every_combination_and_summarises():
    torch.manual_seed(0)
    model = GliomaSegNet(NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1,
                                       transformer_heads=2))
    with torch.no_grad():  # always background: WT 0 (an edema-only case), TC and ET empty in both -> 1
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    labels = np.zeros((10, 12, 9), dtype=np.uint8)
    labels[3:6, 3:7, 2:5] = 2
    case = TrainingCase("c", np.random.default_rng(0).normal(size=(4, 10, 12, 9)).astype(np.float32), labels)
    results = evaluate(model, [case, case])
    assert len(results) == 15
    for entry in results.values():
        assert entry["mean"] == {"wt": 0.0, "tc": 1.0, "et": 1.0} and entry["std"]["wt"] == 0.0
        assert set(entry["cases"]) == {"c"}
    s = summary(results)
    assert s["all"]["wt"] == 0.0 and s["missing_mean"]["tc"] == 1.0 and s["one_missing_mean"]["et"] == 1.0
    table = markdown_table({"a": results, "b": evaluate(model, [case], single_missing())})
    assert table.count("\n") == 2 + 15 + 3 and "only T1" in table and "n/a" in table
    assert "| a | 0.000 | 1.000 | 1.000 |" in summary_table({"a": results})


def _always(label: int) -> GliomaSegNet:
    """A tiny network that predicts ``label`` everywhere."""
    torch.manual_seed(0)
    model = GliomaSegNet(NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1,
                                       transformer_heads=2))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0 if k == label else 0.0 for k in range(4)]))
    return model


def _cored_case(case_id: str) -> TrainingCase:
    labels = np.zeros((10, 12, 9), dtype=np.uint8)
    labels[2:8, 2:10, 2:7] = 2
    labels[4:6, 4:8, 3:6] = 3
    return TrainingCase(case_id, np.random.default_rng(0).normal(size=(4, 10, 12, 9)).astype(np.float32), labels)


def test_without_t1ce_enhancement_is_folded_into_the_core_and_not_scored():
    """As in ``analyze``: a network calling ET everywhere has TC scored alike with and without T1CE, and no ET
    without T1CE (its ET is 'n/a' in the table and left out of the summary's ET means)."""
    results = evaluate(_always(3), [_cored_case("c")])
    every, no_t1ce = results["all"]["mean"], results["missing T1CE"]["mean"]
    assert every["tc"] == no_t1ce["tc"] > 0 and every["et"] > 0 and no_t1ce["et"] == 0.0
    with_t1ce = [v["mean"]["et"] for v in results.values() if "t1ce" in v["modalities"]]
    assert len(with_t1ce) == 8 and summary(results)["mean_15"]["et"] == np.mean(with_t1ce)
    row = next(line for line in markdown_table({"m": results}).splitlines() if line.startswith("| missing T1CE |"))
    assert row.endswith("| n/a |")


def test_each_fold_model_scores_only_its_held_out_cases(tmp_path):
    import json

    from safetensors.torch import save_file

    from training.segmentation.modality_eval import evaluate_folds

    cases = [_cored_case(c) for c in ("a", "b", "c")]
    for fold, (label, held_out) in enumerate(((3, ["a", "b"]), (0, ["c"]))):
        folder = tmp_path / f"fold{fold}"
        folder.mkdir()
        model = _always(label)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "final.safetensors"))
        (folder / "config.json").write_text(json.dumps({"network": model.config.to_dict(),
                                                        "validation_cases": held_out}))
    results = evaluate_folds(tmp_path, cases, single_missing())
    assert len(results) == 5 and all(sorted(e["cases"]) == ["a", "b", "c"] for e in results.values())
    every = results["all"]["cases"]
    assert every["a"]["et"] == every["b"]["et"] > 0 and every["c"] == {"wt": 0.0, "tc": 0.0, "et": 0.0}
