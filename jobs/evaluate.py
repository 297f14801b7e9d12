"""``python -m jobs.evaluate`` / ``ray-ner evaluate --model DIR --data PATH [--json OUT] [--report DIR]``.

Prints the seqeval table; ``--report DIR`` also writes ``DIR/report.html`` (per-type
table and confusion matrix of entity types), as training does for its dev set.
"""

from __future__ import annotations

from jobs.cli import config_from_args, run_main
from pipelines.evaluation import EvaluateConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(EvaluateConfig, argv, "Entity-level precision/recall/F1 of a tagger on labelled data.")
    from jobs.errors import explain
    from ner_core.metrics import format_report
    from pipelines.evaluation import run_evaluation
    from pipelines.console.jobs import evaluation_plan, evaluation_summary
    from pipelines.console.terminal import echo
    from pipelines.ray_env import init_ray

    with explain():
        init_ray()
        evaluation_plan(cfg)
        metrics = run_evaluation(cfg)
    echo(format_report(metrics))
    evaluation_summary(metrics, metrics.get("report"), cfg.json)
    return 0


if __name__ == "__main__":
    run_main(main)
