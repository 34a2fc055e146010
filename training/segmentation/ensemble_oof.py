"""The mean of several runs' out-of-fold probabilities, as a run folder that ``compare_runs`` and
``cross_validate --report-only`` score like any other (screening a model ensemble without predicting again).

    python -m training.segmentation.ensemble_oof OUT RUN [RUN ...]
    python -m training.segmentation.ensemble_oof OUT PAIR_RUN COARSE_RUN --whole-tumor-floor

Each prediction stored in the first RUN and in every other one (all four modalities, ``<case>.npz``, and each missing
modality, ``<case>-without_<m>.npz``): its stored boxes are united, the probabilities (3, Z, Y, X) and uncertainties
pasted into the union and averaged; passes add up. ``--whole-tumor-floor``: the first run's prediction instead, with
edema added where another run's P(WT) is higher, by the difference (the fine stage's core and enhancement kept, the
coarse network's whole tumor as a floor: the screen of a fine stage that loses edema inside its box).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def mean_prediction(paths: Sequence[Path], out: Path, whole_tumor_floor: bool = False) -> None:
    """Write the mean of the stored predictions ``paths`` (one case) as ``out`` (.npz, the same fields); with
    ``whole_tumor_floor`` the first prediction, its edema raised where another's P(WT) is higher, instead."""
    data = [np.load(p) for p in paths]
    start = np.min([d["box"][:, 0] for d in data], axis=0)
    stop = np.max([d["box"][:, 1] for d in data], axis=0)
    shape = tuple(int(n) for n in stop - start)
    pasted = []
    truth = np.zeros(shape, np.uint8)
    for d in data:
        box = tuple(slice(int(a - s), int(b - s)) for (a, b), s in zip(d["box"], start))
        probabilities = np.zeros((4,) + shape, np.float32)  # NCR, ED, ET, uncertainty
        probabilities[(slice(None, 3),) + box] = d["probabilities"].astype(np.float32)
        probabilities[(3,) + box] = d["uncertainty"].astype(np.float32)
        pasted.append(probabilities)
        truth[box] = d["truth"]
    if whole_tumor_floor:
        result = pasted[0]
        floor = np.max([p[:3].sum(axis=0) for p in pasted[1:]], axis=0)
        result[1] += np.maximum(floor - result[:3].sum(axis=0), 0.0)
        passes = int(data[0]["passes"])
    else:
        result = np.mean(pasted, axis=0)
        passes = sum(int(d["passes"]) for d in data)
    np.savez_compressed(out, probabilities=result[:3].astype(np.float16), truth=truth,
                        uncertainty=result[3].astype(np.float16), box=np.stack([start, stop], axis=1),
                        fold=data[0]["fold"], spacing_zyx=data[0]["spacing_zyx"], seconds=0.0, passes=passes,
                        precision="+".join(sorted({str(d["precision"]) if "precision" in d else "unrecorded"
                                                   for d in data})))


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    floor = "--whole-tumor-floor" in args
    args = [a for a in args if a != "--whole-tumor-floor"]
    if len(args) < 3:
        print("usage: python -m training.segmentation.ensemble_oof OUT RUN RUN [RUN ...] [--whole-tumor-floor]",
              file=sys.stderr)
        return 2
    out, runs = Path(args[0]), [Path(r) for r in args[1:]]
    cases = [p.name for p in sorted((runs[0] / "oof").glob("*.npz"))
             if all((r / "oof" / p.name).is_file() for r in runs[1:])]
    if not cases:
        print(f"error: {', '.join(map(str, runs))}: no case predicted in every run", file=sys.stderr)
        return 2
    (out / "oof").mkdir(parents=True, exist_ok=True)
    for name in cases:
        mean_prediction([r / "oof" / name for r in runs], out / "oof" / name, floor)
    missing = sum("-without_" in name for name in cases)
    how = "floored by the other runs' whole tumor" if floor else "averaged"
    print(f"{len(cases) - missing} cases (and {missing} predictions without a modality) {how} into {out / 'oof'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
