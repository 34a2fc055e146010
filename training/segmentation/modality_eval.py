"""Dice (WT, TC, ET) of a segmentation model for every one of the 15 non-empty modality combinations.

    python -m training.segmentation.modality_eval --out RUN/modalities.json                     # the shipped model
    python -m training.segmentation.modality_eval --weights RUN/final.safetensors --out RUN/modalities.json
    python -m training.segmentation.modality_eval --cv RUN --out RUN/modalities_cv.json [--markdown table.md]
    python -m training.segmentation.modality_eval --table vanilla=A.json adapted=B.json --markdown table.md [--summary]

Evaluation runs on the cached 2 mm working grid, one plain network pass (no TTA, no MC-dropout, no post-processing),
Dice against the 2 mm labels: cheaper than the full ``analyze`` pipeline and the same for every model, so differences
between models are comparable; absolute figures differ a little from the full-resolution card. Without T1CE the ET
probability is folded into NCR, as ``analyze`` does: TC is scored, ET is not assessable (``n/a`` in the tables).

A model is scored on the fixed validation split of ``--data`` (``segmentation_data.load_split``); ``--cv RUN``
scores each fold model of a cross-validation run (``RUN/fold<k>/final.safetensors``) on the cases it did not train
on, over every real case (default ``--data``: all 31), so every case is scored once, out of fold.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from GliomaAnalysisLib.models.inference import predict
from GliomaAnalysisLib.io.labels import regions
from GliomaAnalysisLib.pipeline.measures import dice
from GliomaAnalysisLib.io.modalities import MODALITIES
from GliomaAnalysisLib.models.network import GliomaSegNet
from GliomaAnalysisLib.pipeline.postprocess import merge_enhancement_into_core

from ..common.datasets import BRATS18, DEFAULT_CACHE, REAL_DATA_ROOTS
from .segmentation_data import TrainingCase

T1CE = MODALITIES.index("t1ce")

REGIONS = ("wt", "tc", "et")
DISPLAY = {"t1": "T1", "t1ce": "T1CE", "t2": "T2", "flair": "FLAIR"}


def combinations() -> List[Tuple[str, ...]]:
    """The 15 non-empty modality subsets, largest first (all four, each one missing, each pair, each single)."""
    subsets: List[Tuple[str, ...]] = []
    for size in range(len(MODALITIES), 0, -1):
        subsets.extend(itertools.combinations(MODALITIES, size))
    return subsets


def single_missing() -> List[Tuple[str, ...]]:
    """All four modalities, then each one missing (5 subsets: the cheaper evaluation)."""
    return [s for s in combinations() if len(s) >= len(MODALITIES) - 1]


def combination_name(subset: Sequence[str]) -> str:
    """'all', 'missing T1', 'missing T1 & T2', 'only FLAIR' (the seed's Tables VII/VIII wording)."""
    missing = [DISPLAY[m] for m in MODALITIES if m not in subset]
    if not missing:
        return "all"
    if len(subset) == 1:
        return f"only {DISPLAY[subset[0]]}"
    return "missing " + " & ".join(missing)


def presence_of(subset: Sequence[str]) -> np.ndarray:
    """float32 (4,) in MODALITIES order: 1 for the modalities in ``subset``."""
    return np.array([1.0 if m in subset else 0.0 for m in MODALITIES], dtype=np.float32)


def case_dice(model: GliomaSegNet, case: TrainingCase, presence: np.ndarray,
              device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Dice per region of one plain pass on ``case`` with the modalities of ``presence`` (4,), absent ones zeroed;
    without T1CE the ET probability is added to NCR first (``analyze``: enhancement not assessable)."""
    shape = case.labels.shape
    pad = [(0, 0)] + [(0, (-n) % model.config.divisor) for n in shape]
    image = np.pad(case.image * presence[:, None, None, None], pad).astype(np.float32)
    probabilities, _, _ = predict(model, image, presence, device)
    if not presence[T1CE]:
        probabilities = merge_enhancement_into_core(probabilities)
    prediction = regions(probabilities[:, :shape[0], :shape[1], :shape[2]].argmax(0))
    truth = regions(case.labels)
    return {name: dice(prediction[name], truth[name]) for name in REGIONS}


def evaluate(model: GliomaSegNet, cases: Sequence[TrainingCase], subsets: Optional[Sequence[Sequence[str]]] = None,
             device: torch.device = torch.device("cpu"), log=None) -> Dict[str, Dict]:
    """{combination name: {"modalities": [...], "cases": {case id: {wt, tc, et}}, "mean": {...}, "std": {...}}}."""
    results: Dict[str, Dict] = {}
    for subset in subsets if subsets is not None else combinations():
        name = combination_name(subset)
        per_case = {case.case_id: case_dice(model, case, presence_of(subset), device) for case in cases}
        results[name] = with_statistics(list(subset), per_case)
        if log:
            log(f"{name}: " + " ".join(f"{r}={results[name]['mean'][r]:.3f}" for r in REGIONS))
    model.train(False)
    return results


def with_statistics(modalities: List[str], per_case: Dict[str, Dict[str, float]]) -> Dict:
    """One combination's entry: its modalities, the per-case Dice, and their mean and SD per region."""
    values = {r: [d[r] for d in per_case.values()] for r in REGIONS}
    return {"modalities": modalities, "cases": per_case, "mean": {r: float(np.mean(v)) for r, v in values.items()},
            "std": {r: float(np.std(v)) for r, v in values.items()}}


def evaluate_folds(run: Path, cases: Sequence[TrainingCase], subsets: Optional[Sequence[Sequence[str]]] = None,
                   log=None) -> Dict[str, Dict]:
    """``evaluate`` out of fold: each fold model of ``run`` (``fold<k>/final.safetensors`` with its config.json) on
    its validation cases among ``cases``; the per-case Dice of all folds merged per combination."""
    by_id = {c.case_id: c for c in cases}
    merged: Dict[str, Dict] = {}
    for fold in trained_folds(run):
        config = json.loads((fold / "config.json").read_text())
        held_out = [by_id[c] for c in config["validation_cases"] if c in by_id]
        model = load_segmentation_model(str(fold / "final.safetensors"), network=json.dumps(config["network"]))
        fold_log = (lambda line, name=fold.name: log(f"{name} ({len(held_out)} cases) {line}")) if log else None
        for name, entry in evaluate(model, held_out, subsets, log=fold_log).items():
            merged.setdefault(name, {"modalities": entry["modalities"], "cases": {}})["cases"].update(entry["cases"])
    return {name: with_statistics(e["modalities"], e["cases"]) for name, e in merged.items()}


def trained_folds(run: Path) -> List[Path]:
    """The fold folders of ``run`` holding a trained model (``fold<k>/final.safetensors``); a one-line SystemExit
    when there is none."""
    folds = sorted(d for d in run.glob("fold[0-9]*") if (d / "final.safetensors").is_file())
    if not folds:
        raise SystemExit(f"error: {run}: no trained fold (fold<k>/final.safetensors)")
    return folds


def summary(results: Dict[str, Dict]) -> Dict[str, Dict[str, float]]:
    """Mean Dice per region over: all modalities, the one-missing rows, every missing-modality row evaluated
    (14 for the full set), and every row evaluated (15); ET over the rows with T1CE only (not assessable without)."""
    def mean_of(rows: List[Dict]) -> Dict[str, float]:
        if not rows:
            return {}
        means = {r: float(np.mean([v["mean"][r] for v in rows])) for r in ("wt", "tc")}
        with_t1ce = [v["mean"]["et"] for v in rows if "t1ce" in v["modalities"]]
        return {**means, "et": float(np.mean(with_t1ce)) if with_t1ce else float("nan")}

    missing = [v for k, v in results.items() if k != "all"]
    one_missing = [v for v in results.values() if len(v["modalities"]) == len(MODALITIES) - 1]
    return {"all": dict(results["all"]["mean"]), "one_missing_mean": mean_of(one_missing),
            "missing_mean": mean_of(missing), "mean_15": mean_of(list(results.values()))}


def markdown_table(named: Dict[str, Dict[str, Dict]]) -> str:
    """One row per combination, mean +- std Dice per region for each named model (seed 001 Tables VII/VIII)."""
    names = list(named)
    header = "| inputs | " + " | ".join(f"{n} {r.upper()}" for n in names for r in REGIONS) + " |"
    lines = [header, "| --- " * (1 + len(names) * len(REGIONS)) + "|"]
    first = named[names[0]]
    for combo in first:
        cells = []
        for n in names:
            entry = named[n].get(combo)
            cells += [f"{entry['mean'][r]:.3f} ± {entry['std'][r]:.3f}"
                      if entry and (r != "et" or "t1ce" in entry["modalities"]) else "n/a" for r in REGIONS]
        lines.append(f"| {combo} | " + " | ".join(cells) + " |")
    for key, label in (("one_missing_mean", "mean of the 4 one-missing rows (ET: the 3 with T1CE)"),
                       ("missing_mean", "mean of the 14 missing-modality rows (ET: the 7 with T1CE)"),
                       ("mean_15", "mean of all 15 (ET: the 8 with T1CE)")):
        cells = []
        for n in names:
            s = summary(named[n])[key] if len(named[n]) == len(first) or key == "one_missing_mean" else {}
            cells += [f"**{s[r]:.3f}**" if s else "n/a" for r in REGIONS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(named: Dict[str, Dict[str, Dict]]) -> str:
    """One row per named model: Dice WT/TC/ET with all modalities, mean of the one-missing rows, and mean of the
    14 missing-modality rows (when all 15 were evaluated)."""
    lines = ["| model | all WT | all TC | all ET | 1-missing WT | 1-missing TC | 1-missing ET "
             "| 14-missing WT | 14-missing TC | 14-missing ET (rows with T1CE) |", "| --- " * 10 + "|"]
    for name, results in named.items():
        s = summary(results)
        cells = [f"{s['all'][r]:.3f}" for r in REGIONS] + [f"{s['one_missing_mean'][r]:.3f}" for r in REGIONS]
        cells += [f"{s['missing_mean'][r]:.3f}" if len(results) == 15 else "n/a" for r in REGIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_segmentation_model(weights: Optional[str] = None, model_dir: Optional[str] = None,
                            name: str = "glioma_seg", network: str = "{}") -> GliomaSegNet:
    """The shipped model (default), a model folder with a card, or raw safetensors weights (default network)."""
    from GliomaAnalysisLib.models.model_store import load_model, load_state
    from GliomaAnalysisLib.models.network import NetworkConfig

    if weights is None:
        model, _ = load_model(name, model_dir)
        return model
    config = NetworkConfig.from_dict({**NetworkConfig().to_dict(), **json.loads(network)})
    model = GliomaSegNet(config)
    load_state(model, weights)
    return model.eval()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .segmentation_data import load_cases, load_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="safetensors weights (default: the shipped model)")
    parser.add_argument("--model-dir", default=None, help="folder holding NAME.safetensors + NAME.json")
    parser.add_argument("--name", default="glioma_seg")
    parser.add_argument("--network", default="{}", help="JSON overrides of NetworkConfig for --weights")
    parser.add_argument("--cv", default=None, metavar="RUN",
                        help="score each fold model of this cross-validation run on its held-out cases")
    parser.add_argument("--data", nargs="+", default=None,
                        help=f"data roots (default: {BRATS18}'s validation split; with --cv every real case)")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--table", nargs="+", default=None, metavar="NAME=JSON",
                        help="build a markdown table from result files instead of evaluating")
    parser.add_argument("--markdown", default=None, help="where the Markdown table goes (--table: default stdout)")
    parser.add_argument("--summary", action="store_true", help="with --table: one summary row per model")
    parser.add_argument("--subsets", choices=("all15", "single-missing"), default="all15",
                        help="the 15 combinations, or all four + each one missing (5)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cv and (args.weights or args.model_dir):
        parser.error("--cv scores the fold models of RUN: --weights / --model-dir do not apply")

    if args.table:
        named = {}
        for item in args.table:
            label, _, path = item.partition("=")
            named[label] = json.loads(Path(path).read_text())["results"]
        text = summary_table(named) if args.summary else markdown_table(named)
        if args.markdown:
            Path(args.markdown).write_text(text)
        print(text)
        return 0

    torch.set_num_threads(args.threads)
    subsets = combinations() if args.subsets == "all15" else single_missing()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.cv:
        trained_folds(Path(args.cv))  # a wrong folder fails before the cases load
        cases = load_cases([Path(d) for d in args.data or REAL_DATA_ROOTS], Path(args.cache), (2.0, 2.0, 2.0))
        results = evaluate_folds(Path(args.cv), cases, subsets, log=log)
        source = f"{args.cv} (each fold model on its held-out cases)"
        scored = sorted(results[combination_name(subsets[0])]["cases"])
    else:
        _, validation = load_split(Path((args.data or [str(BRATS18)])[0]), Path(args.cache), (2.0, 2.0, 2.0))
        if not validation:
            print(f"error: no validation cases under {(args.data or [str(BRATS18)])[0]}", file=sys.stderr)
            return 2
        model = load_segmentation_model(args.weights, args.model_dir, args.name, args.network)
        results = evaluate(model, validation, subsets, log=log)
        source = args.weights or f"{args.model_dir or 'Resources/models'}/{args.name}"
        scored = [c.case_id for c in validation]
    payload = {"model": source, "cases": scored, "results": results, "summary": summary(results)}
    text = json.dumps(payload, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.markdown:
        Path(args.markdown).write_text(markdown_table({"Dice": results}))
    print(json.dumps(payload["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
