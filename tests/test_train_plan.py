"""How many training workers, with how many CPUs and threads (``plan_workers``), from a cluster's nodes; no Ray needed."""

from __future__ import annotations

import pytest

from pipelines.training.config import TrainConfig, TrainPlan, plan_workers

LAPTOP = [{"CPU": 2.0, "memory": 1e10}]


def test_auto_on_cpu_is_one_worker_per_node_leaving_room_for_ray_data():
    plan = plan_workers(TrainConfig(), LAPTOP)
    assert (plan.num_workers, plan.cpus_per_worker, plan.torch_threads) == (1, 1.5, 2)
    assert plan.why == "auto: one per node (1 node), each node's CPUs less 0.5 for Ray Data tasks"
    two = plan_workers(TrainConfig(data_cpus=1), [{"CPU": 16.0}, {"CPU": 8.0}])
    assert (two.num_workers, two.cpus_per_worker, two.torch_threads) == (2, 7.0, 7)  # the smallest node's share, for both


def test_auto_on_gpu_is_one_worker_per_gpu_and_custom_resources_pick_the_nodes():
    nodes = [{"CPU": 4.0}, {"CPU": 8.0, "GPU": 4.0, "gpu_node": 1.0}, {"CPU": 8.0, "GPU": 2.0}]
    plan = plan_workers(TrainConfig(use_gpu=True), nodes)
    assert (plan.num_workers, plan.cpus_per_worker) == (6, 1.87)  # (8 - 0.5) / 4 GPUs on the fuller node
    pinned = plan_workers(TrainConfig(use_gpu=True, worker_resources="gpu_node=1"), nodes)
    assert pinned.num_workers == 4
    with pytest.raises(ValueError, match="--num-workers auto: the Ray cluster has no GPUs now"):
        plan_workers(TrainConfig(use_gpu=True), LAPTOP)


def test_set_values_are_kept_and_threads_follow_the_cpus():
    assert plan_workers(TrainConfig(num_workers="2", cpus_per_worker=0.5)) == plan_workers(TrainConfig(num_workers=2, cpus_per_worker=0.5), [])
    assert plan_workers(TrainConfig(num_workers=2, cpus_per_worker=0.5), []).torch_threads == 1
    spread = plan_workers(TrainConfig(num_workers=3), [{"CPU": 16.0}, {"CPU": 16.0}])  # two on one node
    assert (spread.num_workers, spread.cpus_per_worker, spread.torch_threads) == (3, 7.75, 8)
    with pytest.raises(ValueError, match="num_workers must be a number or auto"):
        TrainConfig(num_workers="many")


def test_max_steps_sets_the_schedule_and_may_add_epochs():
    plan = TrainPlan(TrainConfig(num_workers=2, cpus_per_worker=1, batch_size=8, epochs=1, max_steps=10), ("O",), windows=121, has_dev=False)
    assert (plan.windows_per_rank, plan.batches_per_epoch, plan.steps_per_epoch) == (60, 8, 8)
    assert (plan.total_steps, plan.epochs, plan.batches_in(0), plan.batches_in(1)) == (10, 2, 8, 2)
    accum = TrainPlan(TrainConfig(num_workers=1, cpus_per_worker=1, batch_size=8, epochs=3, grad_accum_steps=3), ("O",), windows=60, has_dev=False)
    assert (accum.batches_per_epoch, accum.steps_per_epoch, accum.total_steps, accum.epochs) == (8, 3, 9, 3)
