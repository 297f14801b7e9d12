"""SEARCH.yaml for ``ray-ner tune``: which training settings to search and over what, checked once.

Each key is a training setting (a ``TrainConfig`` field); its value is a plain
constant or one distribution::

    lr: {loguniform: [1.0e-5, 3.0e-4]}
    seed: {choice: [1, 2, 3]}
    epochs: {randint: [1, 4]}      # 1, 2 or 3: the upper end is excluded, as in Python and Tune
    warmup_ratio: {uniform: [0.0, 0.2]}
    head: crf                     # a constant: every trial

No Ray here: ``pipelines.tuning`` turns each ``Param`` into Tune's own
distribution. A bad spec is a ``ValueError`` of one line naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import yaml

KINDS = ("loguniform", "uniform", "randint", "choice")
# Settings a search does not vary: where its trials write, and how a run is resumed.
NOT_SEARCHABLE = ("train", "dev", "output", "storage", "storage_shared", "resume", "seeds", "init_from")


@dataclass(frozen=True)
class Param:
    """One searched setting: ``kind`` is one of ``KINDS`` or ``"constant"``; ``args`` its bounds or values."""

    name: str
    kind: str
    args: tuple

    def upper(self) -> Any:
        """The largest value this setting can take (for numbers)."""
        if self.kind == "constant":
            return self.args[0]
        if self.kind == "choice":
            return max(self.args)
        return self.args[1] - 1 if self.kind == "randint" else self.args[1]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yaml_number(value: Any) -> Any:
    """PyYAML reads ``1e-5`` (no dot: YAML 1.1) as text; such text is taken as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _field_types(config_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        out[f.name] = tuple(args)
    return out


def _check_value(config_cls: type, name: str, value: Any, types: tuple) -> None:
    """``value`` as a setting of ``config_cls``: its type, then the config's own checks."""
    if int in types and float not in types and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"{value!r} is not a whole number")
    if float in types and not _number(value):
        raise ValueError(f"{value!r} is not a number")
    if types == (str,) and not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    try:
        config_cls(**{name: value})
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _param(config_cls: type, name: str, spec: Any, types: tuple) -> Param:
    numeric = float in types
    if not isinstance(spec, dict):
        spec = _yaml_number(spec) if numeric else spec
        if isinstance(spec, list):
            raise ValueError(f"a list is not a setting; for one of several values write {{choice: {spec}}}")
        _check_value(config_cls, name, spec, types)
        return Param(name, "constant", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ValueError(f"expected a constant or one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"choice takes a non-empty list of values, got {args!r}")
        args = [_yaml_number(a) for a in args] if numeric else args
        for value in args:
            _check_value(config_cls, name, value, types)
        return Param(name, kind, tuple(args))
    args = [_yaml_number(a) for a in args] if isinstance(args, list) else args
    if not isinstance(args, list) or len(args) != 2 or not all(_number(a) for a in args):
        raise ValueError(f"{kind} takes [low, high], two numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got [{low}, {high}]")
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise ValueError(f"randint takes whole numbers, got {args!r}")
    elif float not in types:
        raise ValueError(f"{kind} gives fractional values, and the setting takes {' or '.join(t.__name__ for t in types)}: use randint or choice")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs low > 0, got {low}")
    for value in (low, high - 1 if kind == "randint" else high):
        _check_value(config_cls, name, int(value) if kind == "randint" else float(value), types)
    return Param(name, kind, (low, high))


def parse_search(data: Any, config_cls: type, source: str = "search") -> dict[str, Param]:
    """The searched settings of ``data`` (a SEARCH.yaml's mapping), each checked against ``config_cls``."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{source}: expected a mapping of training settings to values or distributions")
    types = _field_types(config_cls)
    params = {}
    for key, spec in data.items():
        name = str(key).replace("-", "_")
        if name not in types:
            raise ValueError(f"{source}: {key}: not a training setting")
        if name in NOT_SEARCHABLE:
            raise ValueError(f"{source}: {key}: set once for the whole search, not searched")
        try:
            params[name] = _param(config_cls, name, spec, types[name])
        except ValueError as exc:
            raise ValueError(f"{source}: {key}: {exc}") from None
    return params


def load_search(path: str, config_cls: type) -> dict[str, Param]:
    """``parse_search`` of the YAML file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read search space {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"search space {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_search(data, config_cls, path)


def describe(params: dict[str, Param]) -> str:
    """``lr loguniform(1e-05, 0.0003), seed in {1, 2, 3}, head = crf`` for the plan line."""

    def one(p: Param) -> str:
        if p.kind == "constant":
            return f"{p.name} = {p.args[0]}"
        if p.kind == "choice":
            return f"{p.name} in {{{', '.join(map(str, p.args))}}}"
        return f"{p.name} {p.kind}({p.args[0]:g}, {p.args[1]:g})"

    return ", ".join(one(p) for p in params.values())


def spread(values: list[float]) -> dict[str, float]:
    """Mean, population std, min and max of ``values`` (one or more)."""
    mean = sum(values) / len(values)
    return {
        "mean": mean,
        "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }
