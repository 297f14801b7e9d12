"""``python -m jobs.train`` / ``ray-ner train``: fine-tune a tagger on Ray Train.

    ray-ner train --config jobs/configs/train_conll_minilm.yaml --output runs/conll

Prints the plan, one progress line per epoch with the dev scores under it, and a
summary with the model, its report (``report.html``) and TensorBoard folder.
``--seeds K`` trains K runs (seeds seed..seed+K-1), prints the spread of their dev F1
and keeps the best seed's model.
"""

from __future__ import annotations

from jobs.cli import config_from_args, run_main
from pipelines.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(TrainConfig, argv, "Fine-tune a token tagger with Ray Train.")
    from jobs.errors import explain
    from pipelines.console.jobs import tensorboard_dir, training_plan, training_summary
    from pipelines.ray_env import init_ray
    from pipelines.training.config import plan_workers
    from pipelines.training.driver import resolve_models, run_training

    with explain():
        cfg = resolve_models(cfg)
        init_ray()
        workers = plan_workers(cfg)
        cfg = workers.apply(cfg)
        training_plan(cfg, workers)
        if cfg.seeds > 1:
            from pipelines.tuning import run_seeds, seeds_summary

            summary = run_seeds(cfg)
            seeds_summary(summary)
        else:
            summary = run_training(cfg)
    training_summary(cfg, summary, tensorboard_dir(cfg.output) if cfg.seeds == 1 else None)
    return 0


if __name__ == "__main__":
    run_main(main)
