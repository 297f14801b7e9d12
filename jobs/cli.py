"""Typed configs from YAML plus command-line flags, for every job.

Each job's settings are one dataclass (the single place its defaults live).
A YAML file (``--config``) overrides the defaults and flags override the YAML.
Flags are derived from the dataclass fields (``batch_size`` -> ``--batch-size``)
so a new setting needs no parser code; a field's ``metadata["help"]`` is its
help text and ``metadata["flag"]`` may rename its flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad settings: reported as one line, without a traceback."""


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str] | None`` -> ``list``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return origin or tp


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    parser.add_argument("--verbose", action="store_true", help="also print Ray's own logs and the Ray workers' output (default: in Ray's log files)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        base = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and default != "":
            help_text = f"{help_text} (default: {default})".strip()
        if base is bool:
            parser.add_argument(_flag(f), dest=f.name, nargs="?", const=True, type=_parse_bool, default=None, help=help_text)
            parser.add_argument("--no-" + _flag(f)[2:], dest=f.name, action="store_false", help=argparse.SUPPRESS)
        elif base is list:
            parser.add_argument(_flag(f), dest=f.name, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(_flag(f), dest=f.name, type=base, default=None, help=help_text)
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}


def config_from_args(cls: type[T], argv: list[str] | None, description: str) -> T:
    """Defaults < YAML (--config) < flags. Unknown YAML keys are an error, not ignored."""
    parser = build_parser(cls, description)
    args = parser.parse_args(argv)
    from pipelines.console import set_verbose

    set_verbose(args.verbose)
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if args.config:
        from_yaml = load_yaml(args.config)
        unknown = sorted(set(from_yaml) - names)
        if unknown:
            raise ConfigError(f"config {args.config}: unknown settings {unknown}; known: {sorted(names)}")
        values.update(from_yaml)
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def run_main(main: typing.Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Exit with ``main``'s code; expected failures print one line, not a traceback."""
    try:
        code = main(argv)
    except (ConfigError, FileNotFoundError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
