"""``python -m jobs.evaluate --model DIR --data PATH [--json OUT]``: seqeval report."""

from __future__ import annotations

from jobs.cli import config_from_args, run_main
from pipelines.evaluation import EvaluateConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(EvaluateConfig, argv, "Entity-level precision/recall/F1 of a tagger on labelled data.")
    from jobs.errors import explain
    from ner_core.metrics import format_report
    from pipelines.evaluation import run_evaluation
    from pipelines.ray_env import init_ray

    with explain():
        init_ray()
        metrics = run_evaluation(cfg)
    print(format_report(metrics))
    return 0


if __name__ == "__main__":
    run_main(main)
