"""Writing a folder as a whole: a sibling staging folder, renamed into place only when everything is in it.

``with staged_folder(out) as staging: ...`` writes into ``.<name>.partial-XXXX`` beside ``out``. On success the
staging folder becomes ``out`` in one rename (``out`` absent or empty, or ``replace``); otherwise, when ``out``
already holds files, the staged entries replace their namesakes there and the rest is kept. SIGINT and SIGTERM are held back while the staging folder is created,
committed or removed, so an interruption at any moment leaves either the complete result or nothing new (no
``out``, no ``.partial-*``). A write error (full disk, permissions) becomes one :class:`OutputError` line.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Union

from ..errors import OutputError

PARTIAL = ".partial-"
_HELD = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the block; they are delivered (once) when it ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def staging_name(out: Path) -> str:
    """Prefix of the staging folders of ``out``."""
    return f".{out.name}{PARTIAL}"


@contextlib.contextmanager
def staged_folder(out: Union[str, "os.PathLike[str]"], replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success move its content into ``out`` as a whole.

    replace: an existing ``out`` is replaced as a whole (moved aside, the staging folder renamed, the old one
    removed) instead of receiving the staged entries.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the output folder ({exc.strerror or exc})") from None
    with signals_held():
        try:
            staging = Path(tempfile.mkdtemp(prefix=staging_name(out), dir=parent))
        except OSError as exc:
            raise OutputError(f"{out}: cannot write the outputs ({exc.strerror or exc})") from None
    committed = False
    try:
        try:
            yield staging
        except OSError as exc:
            raise OutputError(f"{out}: cannot write the outputs ({exc.strerror or exc})") from None
        with signals_held():
            _commit(staging, out, replace)
            committed = True
    finally:
        if not committed:
            with signals_held():
                shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, out: Path, replace: bool) -> None:
    """Move ``staging`` into place: one rename when ``out`` is absent or empty (or ``replace``), else entry by
    entry."""
    try:
        if replace and out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            os.rename(staging, out)
            return
        for item in sorted(staging.iterdir()):
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{out}: cannot move the outputs into place ({exc.strerror or exc})") from None
