"""Writes docs/configuration.md from the jobs' config dataclasses: ``python -m jobs.config_docs > docs/configuration.md``.

Each job's settings live in one dataclass (``jobs.cli`` builds the flags from it), so the
reference is generated from the same fields rather than written by hand;
``tests/test_docs.py`` fails when the committed file differs from this output.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from jobs.cli import _flag

HEADER = """# Configuration reference

Generated from the config dataclasses by `python -m jobs.config_docs > docs/configuration.md`;
do not edit by hand (`tests/test_docs.py` fails when this file is stale).

Every job takes `--config FILE.yaml` plus flags that override it: defaults < YAML < flags.
A YAML key is the field name (`batch_size`; `batch-size` also works), a flag is the field
name with dashes (`--batch-size`). A boolean flag alone means true (`--resume`), or takes a
value (`--case-markers false`). Unknown YAML keys are an error. `--verbose` (every job) also
prints Ray's own logs and the workers' output. Examples: [jobs/configs/](../jobs/configs/).
"""


def _jobs() -> list[tuple[str, str, type]]:
    from jobs.demo import DemoConfig
    from pipelines.evaluation import EvaluateConfig
    from pipelines.serving.config import ServeConfig
    from pipelines.tagging.config import TagConfig
    from pipelines.training.config import TrainConfig
    from pipelines.tuning import SearchConfig

    return [
        ("train", "pipelines/training/config.py", TrainConfig),
        ("tune", "pipelines/tuning.py", SearchConfig),
        ("evaluate", "pipelines/evaluation.py", EvaluateConfig),
        ("tag", "pipelines/tagging/config.py", TagConfig),
        ("serve", "pipelines/serving/config.py", ServeConfig),
        ("demo", "jobs/demo.py", DemoConfig),
    ]


def _type_name(tp: typing.Any) -> str:
    """``int | None`` -> ``int``; ``str | dict[str, float] | None`` -> ``str | dict``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names)
    origin = typing.get_origin(tp)
    return (origin or tp).__name__


def _default(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return ""
    value = f.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"`{value:_}`".replace("_", ",")
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def _base(cls: type) -> type | None:
    """The settings class a job's settings extend (tune's extend train's), if any."""
    return next((b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)), None)


def job_table(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    # a job built on another's settings lists only what it adds or changes
    base = _base(cls)
    inherited = {f.name: f for f in dataclasses.fields(base)} if base else {}
    lines = ["| flag / YAML key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        if f.name in inherited and (inherited[f.name].default, inherited[f.name].metadata) == (f.default, f.metadata):
            continue
        key = f"`{_flag(f)}` / `{f.name}`"
        lines.append(f"| {key} | {_type_name(hints[f.name])} | {_default(f)} | {_cell(f.metadata.get('help', ''))} |")
    return "\n".join(lines)


def render() -> str:
    parts = [HEADER]
    jobs = _jobs()
    job_of = {cls: job for job, _, cls in jobs}
    for job, source, cls in jobs:
        base = _base(cls)
        also = f" Every `ray-ner {job_of[base]}` setting too (the base of every trial); below, what it adds or changes." if base else ""
        parts.append(f"## `ray-ner {job}`\n\n`{cls.__name__}` in [{source}](../{source}).{also}\n\n{job_table(cls)}\n")
    return "\n".join(parts)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
