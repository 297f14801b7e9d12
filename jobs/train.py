"""``python -m jobs.train``: fine-tune a tagger on Ray Train.

    python -m jobs.train --config jobs/configs/train_conll_minilm.yaml --output runs/conll
"""

from __future__ import annotations

from jobs.cli import config_from_args, run_main
from pipelines.training import TrainConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(TrainConfig, argv, "Fine-tune a token tagger with Ray Train.")
    from jobs.errors import explain
    from pipelines.ray_env import init_ray
    from pipelines.training import run_training

    with explain():
        init_ray()
        summary = run_training(cfg)
    dev = f"best dev F1 {summary['best_dev_f1']:.4f} at epoch {summary['best_epoch']}" if summary["best_dev_f1"] is not None else "no dev set"
    print(f"trained {cfg.arch} tagger -> {cfg.output}: {dev}; {summary['train_tokens_per_s']:.0f} tokens/s; wall {summary['wall_time_s']:.0f}s")
    return 0


if __name__ == "__main__":
    run_main(main)
