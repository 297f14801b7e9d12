"""The function Ray Train starts on every worker, in a module that imports nothing heavy.

Ray Train's controller actor unpickles the training function and its config but never
runs them. Were they ``pipelines.training.loop`` objects, the controller (and every Tune trial
that only starts a run) would import torch, transformers and the model code: seconds of
start-up per run and hundreds of MB in processes that only coordinate. So the plan
travels as bytes, and only a worker turns it back into objects and imports the model.
"""

from __future__ import annotations

import ray.cloudpickle


def pack(plan) -> dict:
    """``TorchTrainer``'s ``train_loop_config`` for ``plan`` (a ``pipelines.training.config.TrainPlan``)."""
    return {"plan": ray.cloudpickle.dumps(plan)}


def train_loop_per_worker(config: dict) -> None:
    from pipelines.training.loop import train_loop  # torch and the model: on the workers only

    train_loop(ray.cloudpickle.loads(config["plan"]))
