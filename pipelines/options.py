"""How a job's setting is described on the command line: the metadata of a config dataclass field.

``jobs.cli`` builds each job's flags from these: ``help`` is the text, ``group`` the
heading it is listed under, and ``essential`` settings are the ones ``--help`` shows
(``--help-all`` lists every one; every flag is accepted either way).
"""

from __future__ import annotations

from typing import Any

IO = "inputs and outputs"
MODEL = "model"
TRAINING = "training"
RESOURCES = "resources"
ADVANCED = "advanced"
GROUPS = (IO, MODEL, TRAINING, RESOURCES, ADVANCED)  # the order of the headings in --help


def option(text: str, *, group: str = ADVANCED, essential: bool = False, **extra: Any) -> dict:
    """A field's ``metadata``: ``field(default=..., metadata=option("what it does", group=IO, essential=True))``."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}; one of {GROUPS}")
    return {"help": text, "group": group, "essential": essential, **extra}
