"""``python -m jobs.tune`` / ``ray-ner tune``: Ray Tune over the training job.

    ray-ner tune --config jobs/configs/train_conll_minilm.yaml --search jobs/configs/search_example.yaml \
        --trials 8 --concurrent 2 --output runs/conll_search

Every training setting (``--config TRAIN.yaml``, flags) is the base of every trial;
``--search`` names the settings to vary. Prints the plan, one line per trial as it
ends, and the winner; ``--output`` gets trials.csv, report.html and the best
trial's model. A stopped search continues with the same command and ``--resume``.
"""

from __future__ import annotations

import sys

from jobs.cli import config_from_args, run_main
from pipelines.tuning import SearchConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(SearchConfig, argv, "Search training settings with Ray Tune (ASHA on dev F1); keeps the best trial's model.")
    from jobs.errors import explain
    from pipelines.ray_env import init_ray
    from pipelines.tuning import SearchInterrupted, run_tune, search_space

    try:
        with explain():
            params = search_space(cfg)  # a bad search space is one line, before Ray starts
            init_ray()
            run_tune(cfg, params)
    except SearchInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_main(main)
