"""YAML run configurations for the training scripts: ``--config FILE`` sets argparse defaults, flags override.

    python -m training.segmentation.train_segmentation --config training/configs/segmentation.yaml --run-dir RUN --steps 10

Keys are the scripts' option names, with ``-`` or ``_`` (``modality-dropout`` or ``modality_dropout``). A key the
script does not know, a value of the wrong type or outside the option's choices is a clear error (exit status 2)
naming the file and the key. Mappings and lists given to a plain string option (such as ``--network``, which takes
JSON) are passed on as JSON. Options marked required may come from the file. Every script that parses its
arguments here ends a user mistake (missing folder, bad config, no cases found) in one line, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A configuration file that cannot be read or does not fit the script's options."""


def load_yaml(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives {})."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is in the train and test extras
        raise ConfigError("--config needs PyYAML: pip install 'glioma-analysis[train]'") from None
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of option names to values")
    return data


def _options(parser: argparse.ArgumentParser, skip: Sequence[str]) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in skip and not isinstance(a, argparse._HelpAction)}


def _convert(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """``value`` checked and converted for ``action`` as argparse would have converted the flag's text."""
    where = f"{source}: {key}"
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.nargs == 0:  # store_const / count: the value as written
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert_one(action, where, v) for v in value]
    return _convert_one(action, where, value)


def _convert_one(action: argparse.Action, where: str, value: Any) -> Any:
    kind = action.type
    if kind is None or kind is str:
        converted = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        converted = value
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        converted = float(value)
    else:
        try:
            converted = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{where}: invalid value {value!r} ({exc})") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {sorted(action.choices)}")
    return converted


def apply_config(parser: argparse.ArgumentParser, values: Dict[str, Any], source: str = "config",
                 skip: Sequence[str] = ("config",)) -> Dict[str, Any]:
    """Set ``parser``'s defaults from ``values`` (checked); returns the converted defaults."""
    options = _options(parser, skip)
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in normalised if k not in options)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                          f"valid keys: {', '.join(sorted(options))}")
    defaults = {k: _convert(options[k], k, v, source) for k, v in normalised.items()}
    for key, value in defaults.items():
        if value is not None:
            options[key].required = False
    parser.set_defaults(**defaults)
    return defaults


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               flag: str = "--config") -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``flag FILE`` (added here if missing) supplying the defaults.

    Configuration errors end the program with one line ``PROG: error: FILE: KEY: problem`` (exit status 2). Run
from the command line (``argv`` None), later user mistakes (a missing folder, no cases found: any
:class:`GliomaAnalysisError`, a missing file) also end in one line instead of a traceback.
    """
    dest = flag.lstrip("-").replace("-", "_")
    if not any(flag in a.option_strings for a in parser._actions):
        parser.add_argument(flag, default=None, metavar="FILE",
                            help="YAML file of option defaults (training/configs/); flags given here override it")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(flag, default=None)
    known, _ = pre.parse_known_args(argv)
    path = getattr(known, dest)
    if argv is None:  # a command-line run: user mistakes raised later end in one line too
        install_one_line_errors(parser.prog)
    if path:
        try:
            apply_config(parser, load_yaml(path), str(path), skip=(dest,))
        except ConfigError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return parser.parse_args(argv)


def one_line_message(error: BaseException) -> Optional[str]:
    """The one-line message of a user mistake (a library error, a configuration error, a missing or unreadable
    file or folder), or None for anything else (a bug, which keeps its traceback)."""
    from GliomaAnalysisLib.errors import GliomaAnalysisError

    if isinstance(error, (GliomaAnalysisError, ConfigError)):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return f"{error.filename or ''}: {error.strerror or error}"
    return None


def install_one_line_errors(prog: str) -> None:
    """Make an uncaught user mistake end the script with ``PROG: error: MESSAGE`` (exit status 1), no traceback."""
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        message = one_line_message(value)
        if message is None:
            previous(kind, value, traceback)
        else:
            print(f"{prog}: error: {message}", file=sys.stderr)

    sys.excepthook = hook


def cross_validation_parser(parser: argparse.ArgumentParser, description: str) -> argparse.ArgumentParser:
    """A training script's ``parser`` made its cross-validation's: ``--out`` optional (each fold's folder is
    RUN/fold{k}), ``--run-dir``, ``--report-only`` and ``--table`` added. Returns ``parser``."""
    parser.description = description
    for action in parser._actions:
        if action.dest == "out":
            action.required = False
    parser.add_argument("--run-dir", type=Path, required=True, help="this cross-validation's folder")
    parser.add_argument("--report-only", action="store_true", help="no training: report what is predicted so far")
    parser.add_argument("--table", type=Path, default=None, help="write the Markdown report here as well")
    return parser
