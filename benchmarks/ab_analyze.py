"""Interleaved A/B of two versions of the code: whole-process wall time of ``analyze`` on one case, A and B run in
turn, so that both see the same phases of a noisy machine.

    python benchmarks/ab_analyze.py --a bd475b2 --b HEAD [--case DIR] [--flags="--fast"] [--runs 10]
    python benchmarks/ab_analyze.py --a HEAD --batch COHORT_DIR [--runs 5]    # `batch` over a cohort instead

A and B are git revisions of this repository (checked out into temporary worktrees, then removed) or ``.`` for the
working tree. Each run is a fresh ``python -m GliomaAnalysisLib.cli analyze`` process with ``PYTHONPATH`` on that
version and a graph cache of its own (``GLIOMA_ANALYSIS_CACHE``: versions of different ONNX engine versions would
otherwise delete each other's cached graphs and export them again in every run); one untimed warm-up each exports
them. Prints every run, the medians, and the median of the paired differences B - A with the spread of those
differences.

Why: on the 2-core VM the same command took 5.96 s at one hour and 5.1 s half an hour later; benchmark runs minutes
apart compare the machine, not the code (README, Performance).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import timed_process  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


def checkout(revision: str, parent: Path) -> Path:
    """A folder holding ``revision`` of the repository (``.``: the working tree itself)."""
    if revision == ".":
        return REPOSITORY
    folder = parent / revision.replace("/", "_")
    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", "-q", str(folder), revision],
                   check=True)
    return folder


def version_env(folder: Path, cache: Optional[Path] = None) -> Dict[str, str]:
    """The environment of a child running ``folder``'s code (with ``cache`` as its user cache)."""
    env = dict(os.environ, PYTHONPATH=str(folder))
    if cache is not None:
        env["GLIOMA_ANALYSIS_CACHE"] = str(cache)
    return env


def require_imported_from(folder: Path) -> None:
    """Stop unless a child run in ``folder`` imports the package from it. ``python -m`` puts the working folder
    first on sys.path: before 2026-12-05 every child ran in the caller's folder, so both A and B ran the working
    tree's code and every A/B read 0 (the A/Bs of 2026-12-04/05 in the README are void)."""
    probe = "import GliomaAnalysisLib; print(GliomaAnalysisLib.__file__)"
    found = subprocess.run([sys.executable, "-c", probe], env=version_env(folder), cwd=str(folder),
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(folder.resolve()):
        raise SystemExit(f"a child in {folder} imports GliomaAnalysisLib from {found}: the A/B would not compare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="git revision of A, or . for the working tree")
    parser.add_argument("--b", default=".", help="git revision of B, or . for the working tree (default)")
    parser.add_argument("--case", default=str(REPOSITORY.parent / "shared/data/brats18/Brats18_CBICA_AME_1"))
    parser.add_argument("--flags", default="", help="analyze options, given as --flags=\"--fast --no-classify\"")
    parser.add_argument("--runs", type=int, default=10, help="runs of each version")
    parser.add_argument("--batch", metavar="COHORT", help="time `batch COHORT` (seconds per case) instead of analyze (--case is then not used)")
    args = parser.parse_args()
    flags = shlex.split(args.flags)
    case = str(Path(args.batch or args.case).resolve())
    command_name, cases = "analyze", 1
    if args.batch:
        from GliomaAnalysisLib.batch import discover_cases  # the cases batch itself will find

        command_name, cases = "batch", len(discover_cases(case))
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        try:
            folders = {name: checkout(revision, Path(tmp)) for name, revision in (("A", args.a), ("B", args.b))}
            for folder in folders.values():
                require_imported_from(folder)
            seconds: Dict[str, List[float]] = {"A": [], "B": []}
            for run in range(-1, args.runs):  # run -1: warm-up
                for name, folder in folders.items():
                    command = [sys.executable, "-m", "GliomaAnalysisLib.cli", command_name, case, "--out",
                               f"{tmp}/out-{name}-{run}", "--device", "cpu", *flags]
                    env = version_env(folder, Path(tmp) / f"cache-{name}")
                    wall = timed_process(command, env, cwd=str(folder))[0] / cases
                    if run >= 0:
                        seconds[name].append(wall)
                        print(f"run {run + 1:2d} {name}: {wall:.2f} s", flush=True)
        finally:
            for folder in folders.values():
                if folder != REPOSITORY:
                    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(folder)],
                                   check=False)
    differences = [b - a for a, b in zip(seconds["A"], seconds["B"])]
    what = f"batch of {cases} cases (seconds per case)" if args.batch else Path(args.case).name
    print(f"{command_name} {args.flags or '(default)'} on {what}, {args.runs} interleaved runs each")
    for name, revision in (("A", args.a), ("B", args.b)):
        print(f"  {name} ({revision}): median {statistics.median(seconds[name]):.2f} s")
    spread = statistics.stdev(differences) if len(differences) > 1 else float("nan")
    print(f"  B - A: median {statistics.median(differences):+.3f} s (SD of the paired differences {spread:.3f} s)")


if __name__ == "__main__":
    main()
