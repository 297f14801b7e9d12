"""``python -m jobs.tag`` / ``ray-ner tag --model DIR --input IN --output OUT``: bulk tagging on Ray Data.

Prints the plan, a live line of rows tagged, and a summary with the output, errors
and manifest paths (the summary's counts are the manifest's).
"""

from __future__ import annotations

import sys

from jobs.cli import config_from_args, run_main
from pipelines.tagging.driver import TagConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(TagConfig, argv, "Tag Parquet/JSONL corpora with a trained tagger; per-token IOB labels and entity spans.")
    from jobs.errors import explain
    from pipelines.console.jobs import tagging_summary
    from pipelines.ray_env import init_ray
    from pipelines.tagging.driver import run_tagging

    with explain():
        init_ray()
        manifest = run_tagging(cfg)
    tagging_summary(manifest, cfg.output)
    failed = manifest.get("files_failed") or []
    for f in failed:  # files that could not be read to the end: not tagged, retried by the next run
        print(f"error: input file failed, not tagged: {f['source']}: {f['reason']}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} input files failed (listed in _manifest.json files_failed); run the same command again to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
