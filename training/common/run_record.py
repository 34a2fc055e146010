"""Reproducibility record of a training run: ``run.json`` beside its weights and checkpoints.

At start: the full configuration (every option, and the YAML file's text when ``--config`` was used), the command
line, git commit and dirty flag, data split case ids, seed, versions (Python, torch, numpy, this package), device,
world size and host. At the end: the final metrics, outputs with their sha256 and the wall time.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

RUN_RECORD = "run.json"
REPOSITORY = Path(__file__).resolve().parents[2]


def git_state(cwd: Path = REPOSITORY) -> Dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": bool or None} of the checkout holding ``cwd``."""
    def run(*command: str) -> Optional[str]:
        try:
            return subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("git", "rev-parse", "HEAD")
    status = run("git", "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit.strip() if commit else "unknown", "dirty": dirty}


def git_commit() -> str:
    """The commit sha of this checkout, or "unknown" outside git."""
    return git_state()["commit"]


def _plain(value: Any) -> Any:
    """JSON-safe copy (paths and other objects as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _write(path: Path, record: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def start_run_record(run_dir: "str | os.PathLike[str]", config: Dict[str, Any], split: Dict[str, Sequence[str]],
                     seed: int, device: "str | torch.device", script: str, world_size: int = 1,
                     config_file: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``run_dir/run.json`` at the start of a run; returns its path. A resumed run keeps its earlier
    starts under ``previous_starts``."""
    path = Path(run_dir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.is_file() else None
    from GliomaAnalysisLib import __version__

    record: Dict[str, Any] = {
        "script": script,
        "command": [sys.executable] + sys.argv,
        "config": _plain(config),
        "config_file": None if not config_file else {"path": str(config_file),
                                                     "text": Path(config_file).read_text()},
        "git": git_state(),
        "split": {k: list(v) for k, v in split.items()},
        "seed": seed,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "glioma_analysis": __version__},
        "device": str(device),
        "world_size": world_size,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None,
        "metrics": None,
    }
    if extra:
        record.update(_plain(extra))
    if previous:
        record["previous_starts"] = previous.get("previous_starts", []) + [
            {k: previous.get(k) for k in ("started", "git", "command")}]
    _write(path, record)
    return path


def finish_run_record(run_dir: "str | os.PathLike[str]", metrics: Dict[str, Any],
                      outputs: Sequence["str | os.PathLike[str]"] = (), wall_seconds: Optional[float] = None) -> Path:
    """Add the final ``metrics``, the sha256 of ``outputs`` and the wall time to ``run_dir/run.json``."""
    from GliomaAnalysisLib.models.model_store import sha256_of

    path = Path(run_dir) / RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["metrics"] = _plain(metrics)
    record["outputs"] = {Path(p).name: {"path": str(p), "sha256": sha256_of(p)} for p in outputs if Path(p).is_file()}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if wall_seconds is not None:
        record["wall_seconds"] = round(wall_seconds, 1)
    _write(path, record)
    return path


def classification_split_ids(split) -> Dict[str, List[str]]:
    """Case ids of a ClassificationSplit's train / validation / test parts (for ``start_run_record``)."""
    return {part: [s.case_id for s in getattr(split, part)] for part in ("train", "validation", "test")}
