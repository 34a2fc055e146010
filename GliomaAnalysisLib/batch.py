"""Batch analysis of a cohort: every case under a root folder into ``OUT/<case>/``, one bad case never stopping
the rest, a ``summary.csv`` kept current after every case, ``resume`` skipping completed cases, and no half-written
case folder after a failure, Ctrl-C or SIGTERM (each case is written in a hidden staging folder and renamed into
place with its completion marker already inside)."""
from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import sys
import re
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import GliomaAnalysisError, ModalityConflictError
from .io.atomic import staged_folder
from .io.case import scan_folder
from .io.image_io import channel_count
from .io.modalities import strip_image_suffix
from .reporting.cohort_index import write_index

if TYPE_CHECKING:
    from .pipeline.result import AnalysisResult

COMPLETE_MARKER = ".complete"
QC_FILE = "qc.json"
SUMMARY_FIELDS = ["case", "status", "error", "ncr_ml", "ed_ml", "et_ml", "tc_ml", "wt_ml", "grade", "idh",
                  "codeletion_1p19q", "mgmt", "qc_flags", "seconds"]


@dataclass
class CaseOutcome:
    """What happened to one case of a batch."""

    case: str
    status: str  # "ok" | "failed" | "skipped"
    error: str = ""
    volumes_ml: Dict[str, float] = field(default_factory=dict)
    predictions: Dict[str, Optional[str]] = field(default_factory=dict)
    seconds: float = 0.0
    qc_flags: List[str] = field(default_factory=list)

    def row(self) -> Dict[str, object]:
        row: Dict[str, object] = {"case": self.case, "status": self.status, "error": self.error,
                                  "qc_flags": ";".join(self.qc_flags), "seconds": round(self.seconds, 2)}
        row.update({f"{k}_ml": v for k, v in self.volumes_ml.items()})
        row.update(self.predictions)
        return row


def discover_cases(root: "str | os.PathLike[str]") -> List[Path]:
    """Cases under ``root`` (itself included, recursively; hidden folders skipped): each folder holding modality
    files by name (or a single 4D multi-channel file), and each 4D file of a folder holding several (the Medical
    Segmentation Decathlon's ``imagesTr/``)."""
    root = Path(root)
    if not root.is_dir():
        raise GliomaAnalysisError(f"{root}: folder not found")
    cases: List[Path] = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        try:
            scan = scan_folder(folder)
        except ModalityConflictError:
            cases.append(folder)  # a broken case: analysed (and reported as failed), not silently skipped
            continue
        if scan.inputs or scan.multichannel is not None:
            cases.append(folder)
            continue
        cases.extend(sorted(folder / name for name, reason in scan.ignored.items()
                            if reason == "no modality in the name" and channel_count(folder / name) > 1))
    return cases


def _case_name(source: Path, root: Path) -> str:
    relative = source.relative_to(root)
    if source.is_file():
        relative = relative.with_name(strip_image_suffix(source.name) or source.name)
    return "__".join(relative.parts) if relative.parts else source.resolve().name


def _load(source: str, options: Dict):
    """The case at ``source`` (read with the batch's ``channels`` option), for :func:`_analyse_case`."""
    from .io.case import load_case

    return load_case(source, ground_truth=False, channels=options.get("channels"))


CASE_ERRORS = (GliomaAnalysisError, MemoryError, RuntimeError, ValueError, OSError)
"""What fails one case and not the batch: the library's own refusals, and unexpected errors of one case."""


def _analyse_one(source: str, target: str, options: Dict, loaded: Optional[Future] = None) -> CaseOutcome:
    """Analyse one case into ``target`` atomically; returns its outcome (never raises for a case's own fault).
    ``loaded``: the case already being read (a future of :func:`_load`), else it is read here."""
    return _write_case(_analyse_case(source, target, options, loaded))


@dataclass
class _AnalysedCase:
    """A case between its analysis and its files: the result (its classifiers may still run), or the outcome of
    a failure."""

    name: str
    target: Path
    start: float
    result: Optional["AnalysisResult"] = None
    failure: Optional[CaseOutcome] = None


def _analyse_case(source: str, target: str, options: Dict, loaded: Optional[Future] = None) -> _AnalysedCase:
    """The analysis of the case at ``source`` (read here unless ``loaded``), returned before its classifiers
    finish; a case's own fault becomes a failed outcome."""
    from .pipeline.analysis import analyze

    analysis_options = {k: v for k, v in options.items() if k != "channels"}
    case = _AnalysedCase(Path(target).name, Path(target), time.perf_counter())
    try:
        loaded_case = loaded.result() if loaded is not None else _load(source, options)
        case.result = analyze(loaded_case, **analysis_options, wait=False)  # refuses tiny extents itself
    except CASE_ERRORS as exc:
        case.failure = _failed(case, exc)
    return case


def _write_case(case: _AnalysedCase) -> CaseOutcome:
    """Write an analysed case's files into its folder atomically (waiting for its classifiers); its outcome."""
    from .pipeline.quality import qc_flags
    from .reporting.cohort_index import THUMBNAIL_FILE, thumbnail_png
    from .reporting.writers import write_contract_files

    if case.failure is not None:
        return case.failure
    result = case.result
    try:
        flags = qc_flags(result)
        with staged_folder(case.target, replace=True) as staging:
            write_contract_files(result, staging)
            (staging / QC_FILE).write_text(json.dumps({"case": case.name, "flags": flags}, indent=2) + "\n")
            (staging / THUMBNAIL_FILE).write_bytes(thumbnail_png(result))
            (staging / COMPLETE_MARKER).write_text("ok\n")
    except CASE_ERRORS as exc:
        return _failed(case, exc)
    return CaseOutcome(case.name, "ok", "", dict(result.volumes_ml), _labels(result.predictions),
                       time.perf_counter() - case.start, [flag["flag"] for flag in flags])


def _labels(predictions: Dict[str, Optional[Dict]]) -> Dict[str, Optional[str]]:
    """The summary's label per task of a result's (or report's) predictions (None where a classifier did not run)."""
    return {task: (value or {}).get("label") for task, value in predictions.items()}


def _failed(case: _AnalysedCase, exc: BaseException) -> CaseOutcome:
    text = str(exc)
    if not isinstance(exc, GliomaAnalysisError):
        text = f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
    return CaseOutcome(case.name, "failed", text, seconds=time.perf_counter() - case.start)


def summary_name(shard: Optional[Tuple[int, int]] = None) -> str:
    """``summary.csv``, or ``summary-shard-K-of-N.csv`` for one shard of a cohort run on several machines."""
    return "summary.csv" if shard is None else f"summary-shard-{shard[0]}-of-{shard[1]}.csv"


def parse_shard(text: str) -> Tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise GliomaAnalysisError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(match.group(1)), int(match.group(2))


def shard_of(names: Sequence[str], shard: Tuple[int, int]) -> List[str]:
    """The names shard K of N runs: every N-th of the sorted names, starting at the K-th (balanced, and the same
    on every machine that sees the same cohort)."""
    index, count = shard
    return [name for position, name in enumerate(sorted(names)) if position % count == index - 1]


def write_summary(outcomes: List[CaseOutcome], out: Path, name: str = "summary.csv") -> Path:
    """Write ``out/name`` (default ``summary.csv``) atomically, and ``out/index.html`` for a whole run."""
    path = _write_rows([o.row() for o in outcomes], out / name)
    if name == "summary.csv":
        write_index(out, [o.row() for o in outcomes])
    return path


def _write_rows(rows: List[Dict[str, object]], path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=".summary-", suffix=".csv", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: str(r["case"])):
            writer.writerow(row)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def merge_shards(out: "str | os.PathLike[str]") -> Path:
    """Rebuild ``out/summary.csv`` from the shard summaries of ``out`` (``summary-shard-K-of-N.csv``).

    Refused in one line: no shard summary, shards of different N, a missing shard, a case in two shards.
    """
    out = Path(out)
    if not out.is_dir():
        raise GliomaAnalysisError(f"{out}: results folder not found")
    shards = {}
    for path in sorted(out.glob("summary-shard-*-of-*.csv")):
        match = re.fullmatch(r"summary-shard-(\d+)-of-(\d+)\.csv", path.name)
        if match:
            shards[(int(match.group(1)), int(match.group(2)))] = path
    if not shards:
        raise GliomaAnalysisError(f"{out}: no shard summary (summary-shard-K-of-N.csv) to merge")
    counts = sorted({n for _, n in shards})
    if len(counts) > 1:
        raise GliomaAnalysisError(f"{out}: shard summaries of different runs (of {', '.join(map(str, counts))})")
    missing = [k for k in range(1, counts[0] + 1) if (k, counts[0]) not in shards]
    if missing:
        raise GliomaAnalysisError(f"{out}: shard(s) {', '.join(f'{k}/{counts[0]}' for k in missing)} not run yet "
                                  f"(no summary-shard-{missing[0]}-of-{counts[0]}.csv)")
    rows: Dict[str, Dict[str, str]] = {}
    for key, path in sorted(shards.items()):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["case"] in rows:
                    raise GliomaAnalysisError(f"{path}: case {row['case']} is also in another shard's summary")
                rows[row["case"]] = row
    path = _write_rows(list(rows.values()), out / "summary.csv")
    write_index(out, list(rows.values()))
    return path


def _previous_outcomes(out: Path, name: str = "summary.csv") -> Dict[str, CaseOutcome]:
    path = out / name
    if not path.is_file():
        return {}
    outcomes = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            volumes = {k[:-3]: float(v) for k, v in row.items() if k.endswith("_ml") and v not in ("", None)}
            predictions = {k: (row.get(k) or None) for k in ("grade", "idh", "codeletion_1p19q", "mgmt")}
            outcomes[row["case"]] = CaseOutcome(row["case"], row["status"], row.get("error", ""), volumes,
                                                predictions, float(row.get("seconds") or 0),
                                                [f for f in (row.get("qc_flags") or "").split(";") if f])
    return outcomes


def _outcome_of_folder(folder: Path) -> CaseOutcome:
    """The outcome of a case completed in an earlier run but missing from its summary (the run was stopped while
    the case was written), read back from its report.json and qc.json."""
    try:
        report = json.loads((folder / "report.json").read_text())
        flags = json.loads((folder / QC_FILE).read_text()).get("flags", [])
        return CaseOutcome(folder.name, "ok", "", {k: float(v) for k, v in report["volumes_ml"].items()},
                           _labels(report["predictions"]),
                           float(report.get("timings_s", {}).get("total", 0.0)), [flag["flag"] for flag in flags])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return CaseOutcome(folder.name, "ok", "completed in an earlier run")


def analyze_folder(root: "str | os.PathLike[str]", out: "str | os.PathLike[str]", resume: bool = False,
                   jobs: int = 1, progress: Optional[Callable[[str], None]] = None,
                   shard: Optional[Tuple[int, int]] = None, **options) -> List[CaseOutcome]:
    """Analyse every case under ``root`` into ``out/<case>/`` and write ``out/summary.csv``.

    resume: skip cases whose folder holds the completion marker. jobs: cases analysed in parallel (processes; the
    CPU threads are shared between them). shard: (K, N) analyses only shard K of N (see :func:`shard_of`) and
    writes ``summary-shard-K-of-N.csv``; :func:`merge_shards` joins the shards. ``options`` go to :func:`analyze`
    (device, fast, uncertainty, ...) and ``channels`` to :func:`load_case`.
    """
    from .models.openvino_engine import check_engine_settings

    check_engine_settings()  # a misspelt $GLIOMA_ANALYSIS_ENGINE / _PRECISION stops the batch before its first case
    root, out = Path(root), Path(out)
    cases = discover_cases(root)
    if not cases:
        raise GliomaAnalysisError(f"{root}: no case folder with recognisable modality files found")
    named = {_case_name(source, root): source for source in cases}
    if shard is not None:
        named = {name: named[name] for name in shard_of(list(named), shard)}
    summary = summary_name(shard)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_outcomes(out, summary) if resume else {}
    outcomes: Dict[str, CaseOutcome] = {}
    todo = []
    for name, source in sorted(named.items()):
        if resume and (out / name / COMPLETE_MARKER).is_file():
            outcomes[name] = previous.get(name) or _outcome_of_folder(out / name)
        else:
            todo.append((str(source), str(out / name)))
    say = progress or (lambda message: None)
    say(f"{len(named)} case(s){f' in shard {shard[0]}/{shard[1]}' if shard else ''}, "
        f"{len(named) - len(todo)} already complete, {len(todo)} to analyse")
    started, done = time.perf_counter(), 0
    for outcome in _run(todo, jobs, options):
        outcomes[outcome.case] = outcome
        done += 1
        write_summary(list(outcomes.values()), out, summary)
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(todo) - done)
        bar = "#" * int(20 * done / len(todo))
        say(f"[{bar:<20}] {done}/{len(todo)} {outcome.case}: {outcome.status}"
            f"{' (' + outcome.error + ')' if outcome.error else ''}, ETA {eta:.0f} s")
    write_summary(list(outcomes.values()), out, summary)
    return sorted(outcomes.values(), key=lambda o: o.case)


def _run(todo, jobs: int, options: Dict) -> Iterator[CaseOutcome]:
    from .reporting.render3d import render_child

    if jobs <= 1 or len(todo) <= 1:
        # one child process (forked before any thread of the batch starts) draws every case's 3D view
        with render_child() if todo else contextlib.nullcontext():
            yield from _pipelined(todo, options) if todo else ()
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawned, not forked: a process that has already analysed (the Python console, tests) holds ONNX Runtime's and
    # ITK's thread pools, which a forked worker inherits half-alive (a worker segfaulted opening a session)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn, initializer=_start_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_analyse_one, folder, target, options) for folder, target in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _pipelined(todo, options: Dict) -> Iterator[CaseOutcome]:
    """The cases one after another (``--jobs 1``): while a case is analysed in this thread, one worker thread writes
    the previous one (its classifiers finish, its maps are compressed, its views drawn), then reads the next one
    (after the writing, so that two cases' images and maps are never held beside an analysis). Interrupted, it reads
    nothing more, lets the writing under way complete (through further Ctrl-C / SIGTERM: no case folder is left
    half-renamed) and reports that case before the interruption goes on."""
    files = ThreadPoolExecutor(max_workers=1)
    loaded: Optional[Future] = files.submit(_load, todo[0][0], options)
    writing: Optional[Future] = None
    try:
        for index, (folder, target) in enumerate(todo):
            current = loaded
            loaded = files.submit(_load, todo[index + 1][0], options) if index + 1 < len(todo) else None
            analysed = _analyse_case(folder, target, options, current)
            current = None
            if writing is not None:
                outcome, writing = writing.result(), None
                yield outcome
            writing = files.submit(_write_case, analysed)
            del analysed  # the writing alone holds the result: it goes once written
        if writing is not None:
            outcome, writing = writing.result(), None
            yield outcome
    except BaseException as exc:
        if loaded is not None:
            loaded.cancel()
        _shut_down_uninterrupted(files)
        if (writing is not None and not isinstance(exc, GeneratorExit) and not writing.cancelled()
                and writing.exception() is None):
            yield writing.result()  # its summary row, then the interruption goes on
        raise
    finally:
        files.shutdown(wait=True)


def _shut_down_uninterrupted(pool: ThreadPoolExecutor) -> None:
    """Wait for ``pool``'s started and queued work, through further KeyboardInterrupts (Ctrl-C, SIGTERM)."""
    while True:
        try:
            pool.shutdown(wait=True)
            return
        except KeyboardInterrupt:
            continue


def _start_worker(threads: int) -> None:
    """Each worker: its threads (the networks' on OpenVINO and ONNX Runtime, and torch's if a network must run in
    torch), and one child process drawing all its 3D views (it leaves with the worker)."""
    from .models import onnx_engine
    from .reporting.render3d import prestart_render

    prestart_render(keep=True)  # before any thread of the worker starts
    onnx_engine.set_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when it is first imported
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
