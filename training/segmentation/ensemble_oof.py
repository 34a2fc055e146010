"""The mean of several runs' out-of-fold probabilities, as a run folder that ``compare_runs`` and
``cross_validate --report-only`` score like any other (screening a model ensemble without predicting again).

    python -m training.segmentation.ensemble_oof OUT RUN [RUN ...]

Each prediction stored in the first RUN and in every other one (all four modalities, ``<case>.npz``, and each missing
modality, ``<case>-without_<m>.npz``): its stored boxes are united, the probabilities (3, Z, Y, X) and uncertainties
pasted into the union and averaged; passes add up.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def mean_prediction(paths: Sequence[Path], out: Path) -> None:
    """Write the mean of the stored predictions ``paths`` (one case) as ``out`` (.npz, the same fields)."""
    data = [np.load(p) for p in paths]
    start = np.min([d["box"][:, 0] for d in data], axis=0)
    stop = np.max([d["box"][:, 1] for d in data], axis=0)
    shape = tuple(int(n) for n in stop - start)
    probabilities = np.zeros((3,) + shape, np.float32)
    uncertainty = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.uint8)
    for d in data:
        box = tuple(slice(int(a - s), int(b - s)) for (a, b), s in zip(d["box"], start))
        probabilities[(slice(None),) + box] += d["probabilities"].astype(np.float32) / len(data)
        uncertainty[box] += d["uncertainty"].astype(np.float32) / len(data)
        truth[box] = d["truth"]
    np.savez_compressed(out, probabilities=probabilities.astype(np.float16), truth=truth,
                        uncertainty=uncertainty.astype(np.float16), box=np.stack([start, stop], axis=1),
                        fold=data[0]["fold"], spacing_zyx=data[0]["spacing_zyx"], seconds=0.0,
                        passes=sum(int(d["passes"]) for d in data),
                        precision="+".join(sorted({str(d["precision"]) if "precision" in d else "unrecorded"
                                                   for d in data})))


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print("usage: python -m training.segmentation.ensemble_oof OUT RUN RUN [RUN ...]", file=sys.stderr)
        return 2
    out, runs = Path(args[0]), [Path(r) for r in args[1:]]
    cases = [p.name for p in sorted((runs[0] / "oof").glob("*.npz"))
             if all((r / "oof" / p.name).is_file() for r in runs[1:])]
    if not cases:
        print(f"error: {', '.join(map(str, runs))}: no case predicted in every run", file=sys.stderr)
        return 2
    (out / "oof").mkdir(parents=True, exist_ok=True)
    for name in cases:
        mean_prediction([r / "oof" / name for r in runs], out / "oof" / name)
    missing = sum("-without_" in name for name in cases)
    print(f"{len(cases) - missing} cases (and {missing} predictions without a modality) averaged into {out / 'oof'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
