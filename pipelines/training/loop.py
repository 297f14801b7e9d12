"""What every Ray Train worker runs (``train_loop``): build the tagger, restore the last checkpoint,
then per epoch train on this rank's streamed shard, score dev, and checkpoint."""


from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from ner_core.inference import batch_policy
from ner_core.predictor import Predictor
from ner_core.labels import LabelMap
from ner_core.metrics import evaluate_tags
from ner_core.precision import autocast_dtype
from ner_core.tagger import build_tagger, load_tagger, load_tokenizer, replace_head, save_tagger, tagger_labels
from pipelines.console.progress import Reporter
from pipelines.training.batches import Batch, length_grouped_batches
from pipelines.training.config import POOL_WINDOWS, STATE_FILE, TrainConfig, TrainPlan, inference_settings


# ----------------------------------------------------------------- worker side


@dataclass
class _Worker:
    """One rank's training state, shared by the steps of ``train_loop``."""

    plan: TrainPlan
    rank: int
    world: int
    tokenizer: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    dtype: torch.dtype | None  # autocast
    scaler: Any  # fp16 only
    progress: Reporter
    next_epoch: int = 0
    step: int = 0  # optimizer steps done
    history: list[dict] = field(default_factory=list)


def train_loop(plan: TrainPlan) -> None:
    """Every rank (``pipelines.training.worker``): build the tagger, restore the last checkpoint, then per
    epoch train on this rank's shard, score dev, and checkpoint, until ``--epochs`` or ``--max-steps`` ends."""
    worker = _start(plan)
    _restore(worker)
    dev_rows = _dev_share(worker.rank, worker.world) if plan.has_dev else None
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(worker.next_epoch, plan.epochs):
        metrics = _train_epoch(worker, shard, epoch)
        if dev_rows is not None:
            metrics.update(_evaluate(worker.model, worker.tokenizer, dev_rows, plan.cfg, worker.device, worker.dtype))
        _checkpoint(worker, metrics)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model



def _build_model(cfg: TrainConfig, labels: LabelMap):
    """The tokenizer and the tagger to train: a saved one (``--init-from``) or one built from its halves."""
    if cfg.init_from:
        tokenizer, model = load_tokenizer(cfg.init_from), load_tagger(cfg.init_from)
        if cfg.new_head:
            replace_head(model, labels)
        elif tagger_labels(model).labels != labels.labels:
            model.config.id2label, model.config.label2id = dict(labels.id2label), dict(labels.label2id)  # HF's LABEL_k named after the data
        return tokenizer, model
    tokenizer = load_tokenizer(cfg.encoder, case_markers=cfg.case_markers)
    model = build_tagger(
        cfg.arch,
        cfg.encoder,
        cfg.decoder if cfg.arch == "encoder-decoder" else None,
        labels=labels,
        vocab_size=len(tokenizer),
        decoder_attention=cfg.decoder_attention,
        head=cfg.head,
    )
    return tokenizer, model


def _start(plan: TrainPlan) -> _Worker:
    """This rank's model (DDP-wrapped, on its device), optimizer and LR schedule over ``plan.total_steps``."""
    from transformers import get_linear_schedule_with_warmup

    cfg = plan.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.torch_threads)
    _seed_everything(cfg.seed)
    tokenizer, model = _build_model(cfg, LabelMap(plan.labels))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * plan.total_steps), plan.total_steps)
    dtype = autocast_dtype(cfg.mixed_precision, device.type)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    # rank 0's progress goes to the driver's console through the job's progress board
    progress = Reporter(plan.progress if rank == 0 else None)
    return _Worker(plan, rank, world, tokenizer, model, optimizer, scheduler, device, dtype, scaler, progress)


def _restore(worker: _Worker) -> None:
    """Continue from Ray Train's latest checkpoint of this run, if there is one: weights, optimizer, schedule, history."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    from safetensors.torch import load_file

    with checkpoint.as_directory() as ckpt_dir:
        _unwrap(worker.model).load_state_dict(load_file(os.path.join(ckpt_dir, "model.safetensors"), device=str(worker.device)), strict=False)
        state = torch.load(os.path.join(ckpt_dir, STATE_FILE), map_location=worker.device, weights_only=True)
    worker.optimizer.load_state_dict(state["optimizer"])
    worker.scheduler.load_state_dict(state["scheduler"])
    worker.next_epoch = int(state["epoch"]) + 1
    worker.step = int(state.get("step", worker.next_epoch * worker.plan.steps_per_epoch))  # checkpoints before --max-steps
    worker.history = json.loads(state["history"])


def _train_epoch(worker: _Worker, shard, epoch: int) -> dict:
    """One pass over this rank's shard (or up to ``--max-steps``), streamed in length-grouped batches.

    Ray Data runs the split again for each epoch, in the same order (``preserve_order``, and
    the block order the driver shuffled once with the seed), so a rank sees the same
    windows every epoch, and a resumed run the same ones as an uninterrupted one. What
    changes per epoch, seeded by (seed, epoch, rank), is the order inside each pool of
    ``POOL_WINDOWS``: which windows of a length share a batch, and the batches' order.
    (Ray's per-execution reseeding would reshuffle blocks per epoch, but it counts
    executions, so a resumed run would replay epoch 0's order.)
    """
    plan, cfg, model = worker.plan, worker.plan.cfg, worker.model
    _seed_everything(cfg.seed + 7919 * epoch + worker.rank)  # dropout
    model.train()
    batches = plan.batches_in(epoch)
    windows = min(plan.windows_per_rank, batches * cfg.batch_size)
    pool = max(1, POOL_WINDOWS // cfg.batch_size) * cfg.batch_size
    pad_id = worker.tokenizer.pad_token_id if worker.tokenizer.pad_token_id is not None else 0
    stream = iter(shard.iter_batches(batch_size=1024, batch_format="pyarrow", prefetch_batches=1))
    # padded as inference pads: exact in fp32, a few lengths per doubling under bf16/fp16 autocast
    width = batch_policy(worker.device.type, worker.dtype).width
    grouped = length_grouped_batches(stream, windows=windows, batch_size=cfg.batch_size, pool=pool, rng=np.random.default_rng((cfg.seed, epoch, worker.rank)), pad_id=pad_id, width=width)
    t0 = time.perf_counter()
    tokens, loss_sum, recent_loss, recent_batches = 0, 0.0, 0.0, 0
    waits: list[float] = []  # seconds the loop waited for each batch: the data path's cost
    worker.optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(_timed(grouped, waits)):
        last_micro = (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == batches
        loss = _micro_step(worker, batch, last_micro)
        tokens += batch.tokens
        loss_sum, recent_loss, recent_batches = loss_sum + loss, recent_loss + loss, recent_batches + 1
        if worker.rank == 0 and cfg.log_every and ((i + 1) % cfg.log_every == 0 or i + 1 == batches):
            # progress for overnight runs, in the worker's log file (and the driver's console
            # with --verbose); the console's progress line comes through `progress`
            print(f"epoch {epoch + 1}/{plan.epochs} batch {i + 1}/{batches} loss {loss_sum / (i + 1):.4f} {tokens / (time.perf_counter() - t0):.0f} tokens/s (rank 0)", flush=True)
        if worker.rank == 0:
            event = {"kind": "step", "epoch": epoch, "batch": i + 1, "batches": batches, "loss": loss_sum / (i + 1), "recent_loss": recent_loss / recent_batches, "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
            if worker.progress.push(event, throttled=i + 1 < batches):
                recent_loss, recent_batches = 0.0, 0
    if windows == plan.windows_per_rank:
        for _ in stream:  # the split's epoch ends when every rank has read its share to the end
            pass
    train_time = time.perf_counter() - t0
    per_rank = _gather((windows, tokens), worker.world)
    total_tokens = sum(t for _, t in per_rank)
    return {
        "epoch": epoch,
        "step": worker.step,
        "train_loss": loss_sum / max(batches, 1),
        "train_tokens": total_tokens,
        "train_time_s": train_time,
        "tokens_per_s": total_tokens / train_time if train_time else 0.0,
        "lr": worker.scheduler.get_last_lr()[0],
        "train_windows": plan.windows,
        "windows_per_rank": [w for w, _ in per_rank],
        "data_wait_s": sum(waits),  # this rank's: the first batch (the split starting) and the rest
        "first_batch_s": waits[0] if waits else 0.0,
    }


def _timed(items, waits: list[float]):
    """``items``, appending to ``waits`` how long each took to arrive."""
    it = iter(items)
    while True:
        t = time.perf_counter()
        item = next(it, None)
        if item is None:
            return
        waits.append(time.perf_counter() - t)
        yield item


def _micro_step(worker: _Worker, batch: Batch, last_micro: bool) -> float:
    """Forward and backward of one batch; on the last micro-batch of ``--grad-accum-steps``, the optimizer step."""
    cfg, model = worker.plan.cfg, worker.model
    inputs = {k: torch.from_numpy(getattr(batch, k)).to(worker.device) for k in ("input_ids", "attention_mask", "labels")}
    sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
    with sync:
        with torch.autocast(device_type=worker.device.type, dtype=worker.dtype, enabled=worker.dtype is not None):
            loss = model(**inputs).loss / cfg.grad_accum_steps
        (worker.scaler.scale(loss) if worker.scaler else loss).backward()
    if last_micro:
        if worker.scaler:
            worker.scaler.unscale_(worker.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if worker.scaler:
            worker.scaler.step(worker.optimizer)
            worker.scaler.update()
        else:
            worker.optimizer.step()
        worker.scheduler.step()
        worker.optimizer.zero_grad(set_to_none=True)
        worker.step += 1
    return float(loss.detach()) * cfg.grad_accum_steps


def _gather(obj, world: int) -> list:
    """``obj`` from every rank, in rank order (one collective; the object itself on a single worker)."""
    if world == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _dev_share(rank: int, world: int) -> list[dict]:
    """This rank's dev sentences: every ``world``-th, counted in the dataset's order, the same
    on every rank (``preserve_order``); ``_evaluate`` checks that the shares do not overlap."""
    columns = ("tokens", "tags", "source", "line", "context_left", "context_right")
    rows, seen = [], 0
    for batch in ray.train.get_dataset_shard("dev").iter_batches(batch_size=4096, batch_format="pyarrow"):
        part = batch.take([k for k in range(batch.num_rows) if (seen + k) % world == rank])
        seen += batch.num_rows
        values = [part.column(c).to_pylist() for c in columns]
        rows += [dict(zip(columns, v)) for v in zip(*values)]
    return rows


def _evaluate(model, tokenizer, dev_rows, cfg: TrainConfig, device, dtype) -> dict:
    """Dev scores, sharded across the ranks: each predicts its share (``_dev_share``), rank 0 gathers the predictions and scores them all.

    Sharded rather than overlapped with training: the ranks wait for each other only at the
    gather, for the slowest share (``eval_wait_s``: the longest any rank waited there), where
    rank 0 alone used to score all of dev while the others waited for it. Returns the scores
    (and ``eval_time_s``, ``eval_wait_s``) on rank 0, ``{}`` on the others.
    """
    t0 = time.perf_counter()
    tagger = Predictor(_unwrap(model), tokenizer, inference_settings(cfg, tokenizer), device=device, autocast_dtype=dtype)
    pred = tagger.predict([r["tokens"] for r in dev_rows], contexts=[(r["context_left"], r["context_right"]) for r in dev_rows]) if dev_rows else []
    mine = [((r["source"], r["line"]), r["tags"], p) for r, p in zip(dev_rows, pred)]
    ctx = ray.train.get_context()
    shares = _gather((mine, time.perf_counter() - t0), ctx.get_world_size())
    if ctx.get_world_rank() != 0:
        return {}
    rows = sorted((row for share, _ in shares for row in share), key=lambda r: r[0])
    if len({key for key, _, _ in rows}) != len(rows):
        raise RuntimeError("dev shares overlap: the ranks read dev in different orders")
    dev = evaluate_tags([gold for _, gold, _ in rows], [p for _, _, p in rows], scheme="IOB2", mode="strict")
    predicted = [s for _, s in shares]
    return {
        "dev_f1": dev["f1"], "dev_precision": dev["precision"], "dev_recall": dev["recall"],
        "dev_per_type": dev["per_type"], "dev_confusion": dev["confusion"],
        "eval_time_s": time.perf_counter() - t0, "eval_wait_s": max(predicted) - min(predicted),
    }  # fmt: skip


def _checkpoint(worker: _Worker, metrics: dict) -> None:
    """Report the epoch to Ray Train: rank 0 with a checkpoint (tagger, optimizer, schedule, steps, history)."""
    # the checkpoint score: dev F1, or (no dev set) the lowest training loss
    metrics["score"] = metrics.get("dev_f1", -metrics["train_loss"])
    name = f"epoch_{metrics['epoch']:03d}"
    if worker.rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    worker.history.append(metrics)
    worker.progress.push({"kind": "epoch", **metrics}, wait=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_tagger(_unwrap(worker.model), worker.tokenizer, tmp)
        state = {"optimizer": worker.optimizer.state_dict(), "scheduler": worker.scheduler.state_dict(), "epoch": metrics["epoch"], "step": worker.step, "history": json.dumps(worker.history)}
        torch.save(state, os.path.join(tmp, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


