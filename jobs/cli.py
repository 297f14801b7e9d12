"""Typed configs from YAML plus command-line flags, for every job.

Each job's settings are one dataclass (the single place its defaults live).
A YAML file (``--config``) overrides the defaults and flags override the YAML.
Flags are derived from the dataclass fields (``batch_size`` -> ``--batch-size``)
so a new setting needs no parser code; a field's ``metadata["help"]`` is its
help text, ``metadata["flag"]`` may rename its flag, and ``metadata["group"]`` and
``metadata["essential"]`` (``pipelines.options.option``) place it under a heading and
in ``--help`` (essential) or only in ``--help-all``. Every flag is accepted either way.
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


def _metavar(base: Any, flag: str) -> str:
    """``N`` for numbers, else the flag's last word: ``--text-column COLUMN``."""
    return "N" if base in (int, float) else flag.rsplit("-", 1)[-1].upper()


def _help_all(argv: list[str] | None) -> bool:
    return "--help-all" in (sys.argv[1:] if argv is None else argv)


def build_parser(cls: type, description: str, show_all: bool = False) -> argparse.ArgumentParser:
    """The job's parser; ``show_all``: ``--help`` lists every flag, not only the essential ones."""
    from pipelines.options import ADVANCED, GROUPS, IO

    parser = argparse.ArgumentParser(
        description=description,
        usage="%(prog)s [--config YAML] [flags]",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=30),
    )
    parser.add_argument("--help-all", action="help", help="list every flag, not only the essential ones")
    parser.add_argument("--verbose", action="store_true", help="also print Ray's logs and its workers' output")
    headings = {name: parser.add_argument_group(name) for name in GROUPS}
    headings[IO].add_argument("--config", metavar="YAML", help="YAML file of settings; flags override it")
    hints = typing.get_type_hints(cls)
    hidden = 0
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        group = headings.get(f.metadata.get("group", ADVANCED), headings[ADVANCED])
        base = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if default not in (None, "", False):
            help_text = f"{help_text} (default: {default})".strip()
        if not (show_all or f.metadata.get("essential")):
            help_text = argparse.SUPPRESS
            hidden += 1
        names = [_flag(f), *f.metadata.get("aliases", ())]
        metavar = f.metadata.get("metavar") or _metavar(base, names[0])
        if base is bool:
            group.add_argument(*names, dest=f.name, nargs="?", const=True, type=_parse_bool, default=None, help=help_text, metavar="BOOL")
            group.add_argument("--no-" + _flag(f)[2:], dest=f.name, action="store_false", help=argparse.SUPPRESS)
        elif base is list:
            group.add_argument(*names, dest=f.name, nargs="+", default=None, help=help_text, metavar=metavar)
        else:
            group.add_argument(*names, dest=f.name, type=base, default=None, help=help_text, metavar=metavar)
    if hidden:
        parser.epilog = f"{hidden} more flags: --help-all lists every flag."
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
    parser = build_parser(cls, description, show_all=_help_all(argv))
    args = parser.parse_args(argv)
    from pipelines.console.terminal import set_verbose

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
