"""``python -m jobs.tag --model DIR --input IN --output OUT``: bulk tagging on Ray Data."""

from __future__ import annotations

from jobs.cli import config_from_args, run_main
from pipelines.tagging import TagConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(TagConfig, argv, "Tag Parquet/JSONL corpora with a trained tagger; per-token IOB labels and entity spans.")
    from jobs.errors import explain
    from pipelines.ray_env import init_ray
    from pipelines.tagging import run_tagging, summary_line

    with explain():
        init_ray()
        manifest = run_tagging(cfg)
    print(summary_line(manifest, cfg.output))
    return 0


if __name__ == "__main__":
    run_main(main)
