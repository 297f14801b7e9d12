"""``ray-ner train|tune|tag|evaluate|serve|demo [flags]``: every job behind one installed command.

``ray-ner train ...`` is ``python -m jobs.train ...`` (the same flags and ``--config``);
``ray-ner`` is installed by ``pip install`` (``[project.scripts]``), and
``python -m jobs ...`` works too.
"""

from __future__ import annotations

import importlib
import sys

from jobs.cli import run_main

JOBS = {
    "train": ("jobs.train", "fine-tune a tagger on Ray Train"),
    "tune": ("jobs.tune", "search training settings with Ray Tune (ASHA on dev F1), keep the best model"),
    "tag": ("jobs.tag", "bulk-tag Parquet/JSONL with a trained tagger on Ray Data"),
    "evaluate": ("jobs.evaluate", "precision/recall/F1 (and --report) on labelled data"),
    "serve": ("jobs.serve", "the tagger behind an HTTP API on Ray Serve (POST /v1/tag)"),
    "demo": ("jobs.demo", "the whole loop on generated data with the packaged MiniLM, in a few minutes"),
}


def usage() -> str:
    lines = ["usage: ray-ner {train,tune,tag,evaluate,serve,demo} [flags]   (ray-ner JOB --help lists a job's flags)", ""]
    lines += [f"  {name:<9} {about}" for name, (_, about) in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"error: unknown job {name!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"ray-ner {name}"  # so a job's --help and usage errors name the command that was typed
    run_main(importlib.import_module(JOBS[name][0]).main, rest)


if __name__ == "__main__":
    main()
