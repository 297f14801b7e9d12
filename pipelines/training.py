"""Data-parallel fine-tuning on Ray Train, fed by Ray Data.

The driver reads and validates the data (in Ray Data tasks), fixes the label
map, tokenizes into windows (Ray Data tasks again), works out the workers
(``plan_workers``) and the steps (``TrainPlan``) and starts a ``TorchTrainer``.
Each worker builds the tagger, wraps it with ``prepare_model`` (DDP, device),
streams its own share of the windows (Ray Data's streaming split) into
length-grouped batches (``pipelines.train_batches``), and after every epoch (or
at ``--max-steps``) the ranks score their shares of dev, rank 0 scores the whole
with seqeval and reports a checkpoint. The best checkpoint by dev F1 becomes the
output model.

Resume is Ray Train's own: a run with the same name and storage path picks up
its checkpoint manager and ``ray.train.get_checkpoint()`` returns the latest
checkpoint, which holds model, optimizer, scheduler, the epoch and step reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ner_core.alignment import special_token_count
from ner_core.calibration import score_labelled
from ner_core.predictor import Predictor, resolve_settings, write_settings
from ner_core.conll import check_documents
from ner_core.labels import SCHEMES, LabelMap
from ner_core.metrics import evaluate_tags
from ner_core.labels import LabelMismatchError, resolve_head_labels
from ner_core.model import DECODER_ATTENTION, LEGACY_DECODER_ATTENTION, is_token_classification_config
from ner_core.model_files import HEADS, read_saved_model
from ner_core.precision import autocast_dtype, check_mixed_precision
from ner_core.tagger import ARCHS, build_tagger, load_tagger, load_tokenizer, replace_head, resolve_model_path, save_tagger, tagger_labels
from pipelines.cluster import parse_resources, require_reachable
from ner_core.report import training_report, write_report
from pipelines.console import Stage
from pipelines.job_console import TrainingMonitor, tensorboard_dir
from pipelines.options import ADVANCED, IO, MODEL, RESOURCES, TRAINING, option
from pipelines.labelled_data import collect_labels, encode_for_training, read_labelled, rows_with_context
from pipelines.progress import Reporter
from pipelines import train_worker
from pipelines.train_batches import Batch, length_grouped_batches
from pipelines.storage import arrow_filesystem, fsspec_filesystem, is_s3, join_path, path_exists, strip_scheme

RUN_NAME = "train"
TRAIN_STRIDE = 32  # the default overlap of training windows
STATE_FILE = "train_state.pt"
# Windows a worker sorts by length at a time: batches pad little, and the worker holds no
# more than this many windows whatever the size of the data.
POOL_WINDOWS = 4096
# Rows per block of the training windows the workers stream: small blocks spread evenly
# over the workers, and the seeded block shuffle mixes the corpus at this grain.
WINDOWS_PER_BLOCK = 1024


@dataclass
class TrainConfig:
    """Every training setting and its default (YAML keys and flags use these names)."""

    train: str | None = field(default=None, metadata=option("labelled training data: CoNLL, Parquet or JSONL (tokens/tags); local or s3://", group=IO, essential=True))
    dev: str | None = field(default=None, metadata=option("labelled dev data, scored each epoch to pick the best model", group=IO, essential=True))
    output: str = field(default="outputs/train", metadata=option("output folder (local or s3://): model, report, metrics", group=IO, essential=True))
    storage: str | None = field(default=None, metadata=option("this run's checkpoints: s3://... or a folder every node mounts (default: <output>/_ray; on a cluster of several nodes it must be s3:// or shared)", group=IO))
    storage_shared: bool = field(default=False, metadata=option("the local --storage path is a shared mount (NFS, EFS) that every node sees at the same path", group=IO))
    arch: str = field(default="encoder-decoder", metadata=option("encoder-decoder | encoder", group=MODEL, essential=True))
    encoder: str = field(default="minilm", metadata=option("encoder name or folder ('minilm': the packaged all-MiniLM-L6-v2)", group=MODEL, essential=True))
    decoder: str | None = field(default=None, metadata=option("decoder name or directory for encoder-decoder (default: the encoder)", group=MODEL))
    init_from: str | None = field(default=None, metadata=option("a tagger saved by jobs.train (local folder) to fine-tune further instead of building one: its architecture, decoder attention, tokenizer and case markers are used, and --arch/--encoder/--decoder/--decoder-attention/--case-markers are not", group=MODEL))
    new_head: bool = field(default=False, metadata=option("with --init-from: a new, untrained classifier for the training data's labels (transfer to another label set, e.g. CoNLL-2003 to WNUT-2017); without it the saved head is kept and its labels must be the data's", group=MODEL))
    decoder_attention: str = field(default="bidirectional", metadata=option("encoder-decoder only: the decoder's self-attention, bidirectional | causal (HF's decoder as is)", group=MODEL))
    head: str = field(default="linear", metadata=option("linear | crf (a CRF never outputs an invalid IOB2 sequence)", group=MODEL, essential=True))
    scheme: str = field(default="IOB2", metadata=option("tag scheme of the input data: IOB1 | IOB2 | IOBES (converted to IOB2)", group=IO))
    repair_invalid: bool = field(default=False, metadata=option("repair invalid tag sequences (e.g. O I-PER) instead of failing", group=IO))
    token_column: int = field(default=0, metadata=option("CoNLL column holding the token", group=IO))
    tag_column: int = field(default=-1, metadata=option("CoNLL column holding the tag", group=IO))
    case_markers: bool = field(default=False, metadata=option("mark capitalised / all-caps words with extra tokens: gives an uncased encoder (e.g. minilm) the case it lowercases away", group=MODEL))
    epochs: int = field(default=3, metadata=option("passes over the training data", group=TRAINING, essential=True))
    batch_size: int = field(default=32, metadata=option("windows per optimizer micro-step, per worker", group=TRAINING, essential=True))
    grad_accum_steps: int = field(default=1, metadata=option("micro-steps per optimizer step", group=TRAINING))
    lr: float = field(default=5e-5, metadata=option("peak learning rate", group=TRAINING, essential=True))
    weight_decay: float = field(default=0.01, metadata=option("AdamW weight decay", group=TRAINING))
    warmup_ratio: float = field(default=0.1, metadata=option("share of the steps the learning rate warms up over", group=TRAINING))
    max_grad_norm: float = field(default=1.0, metadata=option("gradient clipping norm", group=TRAINING))
    max_length: int = field(default=128, metadata=option("subword window length; longer sentences become overlapping windows", group=MODEL))
    stride: int | None = field(default=None, metadata=option("subword overlap between consecutive windows (default 32, or half the window where that is not shorter; saved with the model)", group=MODEL))
    context_length: int = field(default=0, metadata=option("document context: up to this many subwords of the sentence's own document on each side, read but not labelled (CoNLL files with -DOCSTART-; 0: off)", group=MODEL))
    documents: str = field(default="markers", metadata=option("where document context finds a CoNLL file's documents: markers (its -DOCSTART- lines) | datelines (the same where a file has them, else inferred from Reuters datelines, for CoNLL-2003 copies that lost their markers)", group=MODEL))
    eval_batch_size: int = field(default=64, metadata=option("windows per forward pass when scoring the dev set", group=ADVANCED))
    max_steps: int | None = field(default=None, metadata=option("stop after this many optimizer steps, overriding --epochs (HF's max_steps: the LR schedule ends there, and more epochs run if needed); evaluated and checkpointed where it stops", group=TRAINING))
    num_workers: int | str = field(default="auto", metadata=option("training processes (data-parallel): N, or auto (one per GPU, or one per node on CPU)", group=RESOURCES, essential=True))
    use_gpu: bool = field(default=False, metadata=option("train on GPUs, one worker per GPU", group=RESOURCES, essential=True))
    cpus_per_worker: float | None = field(default=None, metadata=option("CPUs reserved per worker, fractional allowed (default: each node's CPUs less --data-cpus, shared by the workers it holds)", group=RESOURCES))
    data_cpus: float = field(default=0.5, metadata=option("CPUs per node the default --cpus-per-worker leaves free for reading and preparing the data", group=RESOURCES))
    worker_resources: str | dict[str, float] | None = field(default=None, metadata=option("custom Ray resources per worker, NAME=AMOUNT[,...] (e.g. gpu_node=1): pins workers to the node types that declare them", group=RESOURCES))
    torch_threads: int | None = field(default=None, metadata=option("torch intra-op threads per worker (default: the worker's CPUs, rounded up)", group=RESOURCES))
    mixed_precision: str = field(default="auto", metadata=option("auto (bf16/fp16 on GPU, fp32 on CPU) | bf16 | fp16 | none", group=MODEL, essential=True, metavar="MODE"))
    seed: int = field(default=42, metadata=option("random seed (data order, initial weights)", group=TRAINING))
    seeds: int = field(default=1, metadata=option("train this many runs, with seeds seed..seed+K-1, and report the mean and spread of their dev F1; the model saved is the best seed's", group=TRAINING))
    log_every: int = field(default=50, metadata=option("print progress every N batches on rank 0 (0: never)", group=ADVANCED))
    resume: bool = field(default=False, metadata=option("continue the interrupted run in --output from its last checkpoint", group=IO, essential=True))
    max_failures: int = field(default=2, metadata=option("worker failures tolerated; each restarts from the last checkpoint", group=ADVANCED))
    checkpoints_to_keep: int = 2

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.arch == "encoder" and self.decoder:
            raise ValueError("arch 'encoder' takes no decoder")
        if self.new_head and not self.init_from:
            raise ValueError("--new-head replaces the head of the --init-from tagger: pass --init-from")
        if self.init_from and self.decoder:
            raise ValueError("--init-from fine-tunes a whole saved tagger: it takes no --decoder")
        if self.decoder_attention not in DECODER_ATTENTION:
            raise ValueError(f"decoder_attention must be one of {DECODER_ATTENTION}, got {self.decoder_attention!r}")
        check_mixed_precision(self.mixed_precision)
        if isinstance(self.num_workers, str) and self.num_workers != "auto":
            try:
                self.num_workers = int(self.num_workers)  # a flag's text
            except ValueError:
                raise ValueError(f"num_workers must be a number or auto, got {self.num_workers!r}") from None
        for name in ("epochs", "seeds", "batch_size", "grad_accum_steps", "max_length", "eval_batch_size", "num_workers", "torch_threads", "max_steps"):
            value = getattr(self, name)
            if value is not None and value != "auto" and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError("cpus_per_worker must be > 0")
        if self.data_cpus < 0:
            raise ValueError("data_cpus must be >= 0")
        if self.context_length < 0:
            raise ValueError(f"context_length must be >= 0, got {self.context_length}")
        check_documents(self.documents)
        parse_resources(self.worker_resources)

    @property
    def run_dir(self) -> str:
        """Where Ray Train keeps this run (checkpoints, its state): ``--storage``, else ``<output>/_ray``.

        Checkpoints are uploaded by the workers, wherever Ray placed them, so on a
        cluster of several nodes this must be storage every node reaches.
        """
        if self.storage:
            return self.storage.rstrip("/") if is_s3(self.storage) else os.path.abspath(self.storage)
        if is_s3(self.output):
            return self.output.rstrip("/") + "/_ray"
        return os.path.join(os.path.abspath(self.output), "_ray")

    def resources_per_worker(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": 1} if self.use_gpu else {}), **parse_resources(self.worker_resources)}


# ----------------------------------------------------------------- what the workers get


@dataclass(frozen=True)
class WorkerPlan:
    """How many Ray Train workers and what each one holds, worked out once on the driver; ``why`` is for the plan line."""

    num_workers: int
    cpus_per_worker: float
    torch_threads: int
    why: str

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        return dataclasses.replace(cfg, num_workers=self.num_workers, cpus_per_worker=self.cpus_per_worker, torch_threads=self.torch_threads)


def plan_workers(cfg: TrainConfig, nodes: list[dict] | None = None) -> WorkerPlan:
    """``--num-workers auto`` and the default CPUs and threads, from the nodes alive now (Ray's ``Resources`` dicts).

    auto: with ``--use-gpu`` one worker per GPU in the cluster; on CPU one per node, using
    its cores. A worker's CPUs default to its node's CPUs less ``--data-cpus`` (the room Ray
    Data's tasks need beside the workers: on 2 cores, workers holding both would leave them
    waiting forever), shared by the workers the node holds; torch threads default to those
    CPUs rounded up. Nodes lacking ``--worker-resources`` are not counted. A config whose
    values are all set comes back as it is.
    """
    if cfg.num_workers != "auto" and cfg.cpus_per_worker is not None:
        return WorkerPlan(int(cfg.num_workers), cfg.cpus_per_worker, cfg.torch_threads or max(1, math.ceil(cfg.cpus_per_worker)), "as set")
    if nodes is None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    wanted = parse_resources(cfg.worker_resources)
    usable = [r for r in nodes if all(r.get(k, 0) >= v for k, v in wanted.items()) and (r.get("GPU", 0) >= 1 if cfg.use_gpu else r.get("CPU", 0) > cfg.data_cpus)]
    per_node = [int(r["GPU"]) if cfg.use_gpu else 1 for r in usable]  # workers each node takes under auto
    if cfg.num_workers == "auto":
        num_workers = sum(per_node)
        if not num_workers:
            what = "GPUs" if cfg.use_gpu else f"nodes with more than --data-cpus {cfg.data_cpus:g} CPUs"
            needs = f" and {', '.join(wanted)}" if wanted else ""
            raise ValueError(f"--num-workers auto: the Ray cluster has no {what}{needs} now (an autoscaling cluster starts nodes on demand): pass --num-workers N and --cpus-per-worker")
        why = f"auto: one per GPU ({num_workers} in the cluster)" if cfg.use_gpu else f"auto: one per node ({num_workers} node{'s' if num_workers > 1 else ''})"
    else:
        num_workers, why = int(cfg.num_workers), "as set"
        per_node = [math.ceil(num_workers / max(len(usable), 1))] * len(usable)  # spread evenly
    cpus = cfg.cpus_per_worker
    if cpus is None:
        if not usable:
            raise ValueError("no node has room for a training worker now: pass --cpus-per-worker")
        # the smallest node's share: Ray Train asks the same of every worker
        cpus = math.floor(100 * min((r["CPU"] - cfg.data_cpus) / k for r, k in zip(usable, per_node))) / 100
        if cpus <= 0:
            raise ValueError(f"{num_workers} workers leave no CPU per worker after --data-cpus {cfg.data_cpus:g}: pass --cpus-per-worker")
        why += f", each node's CPUs less {cfg.data_cpus:g} for Ray Data tasks"
    threads = cfg.torch_threads or max(1, math.ceil(cpus))
    return WorkerPlan(num_workers, cpus, threads, why)


@dataclass(frozen=True)
class TrainPlan:
    """The one object every worker is given: the settings (workers resolved) and what the driver found in the data.

    Every rank trains on ``windows // num_workers`` windows per epoch: the train set reaches
    the workers through Ray Data's ``streaming_split(equal=True)``, which gives each the same
    number of rows (dropping the remainder, fewer than one window per worker). So every rank
    runs the same number of optimizer steps, which DDP needs, and the counts are known here.
    """

    cfg: TrainConfig
    labels: tuple[str, ...]
    windows: int  # in the training set
    has_dev: bool
    progress: Any = None  # rank 0's progress board (pipelines.progress)

    @property
    def windows_per_rank(self) -> int:
        return self.windows // self.cfg.num_workers

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.windows_per_rank / self.cfg.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.cfg.grad_accum_steps)

    @property
    def total_steps(self) -> int:
        """The LR schedule's length: ``--max-steps``, else every step of ``--epochs``."""
        return self.cfg.max_steps or self.steps_per_epoch * self.cfg.epochs

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def batches_in(self, epoch: int) -> int:
        """Micro-batches of ``epoch``: all, or in the epoch where ``--max-steps`` ends, those up to it."""
        left = self.total_steps - epoch * self.steps_per_epoch
        return min(self.batches_per_epoch, left * self.cfg.grad_accum_steps)


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
    """Every rank (``pipelines.train_worker``): build the tagger, restore the last checkpoint, then per
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


def inference_settings(cfg: TrainConfig, tokenizer, temperature: float = 1.0):
    """The settings the model is scored with on dev and saved with (``inference.json``), so that
    ``jobs.evaluate`` and ``jobs.tag`` predict exactly as dev scoring did."""
    asked = {"max_length": cfg.max_length, "stride": cfg.stride, "context_length": cfg.context_length, "temperature": temperature, "batch_size": cfg.eval_batch_size}
    settings, _ = resolve_settings({"stride": TRAIN_STRIDE}, specials=special_token_count(tokenizer), overrides=asked)
    return settings


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
    grouped = length_grouped_batches(stream, windows=windows, batch_size=cfg.batch_size, pool=pool, rng=np.random.default_rng((cfg.seed, epoch, worker.rank)), pad_id=pad_id)
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


# ----------------------------------------------------------------- driver side


def _labels_for(cfg: TrainConfig, train_ds) -> LabelMap:
    """The model's label map: the training data's, fitted to a saved head when the model starts from one.

    The checkpoint that carries the head is the decoder (encoder-decoder) or
    the encoder (encoder-only); its labels are resolved by
    ``ner_core.labels.resolve_head_labels`` (HF's ``run_ner.py`` convention),
    here on the driver, so a mismatch is one line before any training.
    """
    from transformers import AutoConfig

    found = LabelMap(tuple(collect_labels(train_ds)))
    if cfg.init_from:
        if cfg.new_head:
            return found
        saved = read_saved_model(resolve_model_path(cfg.init_from))
        try:
            return resolve_head_labels(dict(enumerate(saved.labels)), found.labels, f"the tagger {cfg.init_from}")
        except LabelMismatchError as exc:
            raise LabelMismatchError(f"{exc}; pass --new-head true to train a new classifier for the data's labels") from None
    head_path = (cfg.decoder or cfg.encoder) if cfg.arch == "encoder-decoder" else cfg.encoder
    head_cfg = AutoConfig.from_pretrained(resolve_model_path(head_path), trust_remote_code=False)
    if is_token_classification_config(head_cfg):
        return resolve_head_labels(head_cfg.id2label, found.labels, f"the saved head of {head_path}")
    return found


def resolve_models(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as the workers need it: local model folders as absolute paths, and an
    ``--init-from`` tagger's architecture, decoder attention and case markers.

    Ray Train workers and Ray Data tasks run in directories of Ray's own, so
    ``--decoder ./my_decoder`` would be looked up there (then on the hub); a name
    that is no local path (``distilbert-base-uncased``, ``minilm``) is left as is.
    The saved tagger is read from its files (no model load), so the plan, the workers
    and the run's ``metrics.json`` all say what is actually trained, and a folder that
    is not a whole saved tagger is a one-line error before any Ray work.
    """
    local = {k: os.path.abspath(v) for k in ("encoder", "decoder", "init_from") if (v := getattr(cfg, k)) and os.path.exists(v)}
    cfg = dataclasses.replace(cfg, **local)
    if not cfg.init_from:
        return cfg
    path = resolve_model_path(cfg.init_from)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--init-from {cfg.init_from}: no such folder (a tagger saved by jobs.train)")
    try:
        saved = read_saved_model(path)
    except ValueError as exc:
        raise ValueError(f"--init-from {cfg.init_from}: {exc}") from None
    attention = saved.decoder_attention or (LEGACY_DECODER_ATTENTION if saved.arch == "encoder-decoder" else cfg.decoder_attention)
    return dataclasses.replace(cfg, arch=saved.arch, decoder_attention=attention, case_markers=saved.case_markers, head=saved.head)


def _storage_args(run_dir: str) -> dict:
    """RunConfig's storage for ``run_dir``: S3 through the same s3fs as all other I/O
    (so ``AWS_ENDPOINT_URL`` applies to checkpoints too), a local/shared path as is."""
    if is_s3(run_dir):
        return {"storage_path": strip_scheme(run_dir), "storage_filesystem": arrow_filesystem(run_dir)}
    return {"storage_path": run_dir}


def _run_exists(run_dir: str) -> bool:
    return path_exists(join_path(run_dir, RUN_NAME))


def _require_context(data: dict, context_length: int, documents: str) -> None:
    """``--context-length`` on data with no documents would silently train without context: stop instead."""
    for flag, (path, ds) in data.items():
        if rows_with_context(ds) == 0:
            if documents == "datelines":
                missing, fixes = "neither -DOCSTART- document markers nor Reuters datelines", "on files that mark their documents"
            else:
                missing, fixes = "no -DOCSTART- document markers", "on files that mark their documents, or with --documents datelines (Reuters news: CoNLL-2003)"
            raise ValueError(
                f"--context-length {context_length}: {flag} {path} has {missing}, so no sentence "
                f"has document context; train with --context-length 0, {fixes}"
            )


def _read(cfg: TrainConfig, path: str):
    """Labelled rows of ``path``, materialized in file order (so windows and dev shares come out the same in every run)."""
    ds = read_labelled(
        path, scheme=cfg.scheme, repair_invalid=cfg.repair_invalid, token_column=cfg.token_column, tag_column=cfg.tag_column,
        context_words=cfg.context_length, documents=cfg.documents,
    )  # fmt: skip
    ds.context.execution_options.preserve_order = True  # this dataset's own context, shared by those made from it
    return ds.materialize()


def run_training(cfg: TrainConfig, *, callbacks: list | None = None) -> dict:
    """Train, select the best epoch by dev F1, write the output directory; returns the summary.

    ``callbacks``: more of Ray Train's ``UserCallback`` for the run's ``RunConfig``, such as
    Tune's ``TuneReportCallback`` when a search trial (``pipelines.tuning``) runs it.
    """
    started = time.perf_counter()
    if not cfg.train:
        raise ValueError("no training data: set --train")
    cfg = resolve_models(cfg)
    cfg = plan_workers(cfg).apply(cfg)  # no change when jobs.train resolved them for its plan line
    if cfg.arch == "encoder-decoder" and not cfg.init_from:
        from ner_core.model import check_encoder_decoder

        check_encoder_decoder(resolve_model_path(cfg.encoder), resolve_model_path(cfg.decoder or cfg.encoder))
    require_reachable(
        cfg.run_dir,
        shared=cfg.storage_shared,
        needs=cfg.resources_per_worker(),
        describe=f"--storage {cfg.run_dir}" if cfg.storage else f"the run directory {cfg.run_dir} (default: under --output)",
        what="training workers",
        fix="pass --storage s3://... (or an s3:// --output), or --storage-shared true if it is a mount every node shares",
    )
    where = cfg.storage or cfg.output
    if _run_exists(cfg.run_dir) and not cfg.resume:
        raise FileExistsError(f"{where} holds an earlier run: pass --resume to continue it, or choose another {'--storage' if cfg.storage else '--output'}")
    if cfg.resume and not _run_exists(cfg.run_dir):
        raise FileNotFoundError(f"--resume: no earlier run in {where}")

    # the stride in use from here on (a --stride as long as the window stops here, not in a tokenizing task)
    tokenizer = load_tokenizer(resolve_model_path(cfg.init_from or cfg.encoder), case_markers=cfg.case_markers and not cfg.init_from)
    cfg = dataclasses.replace(cfg, stride=inference_settings(cfg, tokenizer).stride)
    reading = Stage("reading and tokenizing data", unit=None)
    train_ds = _read(cfg, cfg.train)
    labels = _labels_for(cfg, train_ds)
    datasets = {}
    if cfg.dev:
        dev_ds = _read(cfg, cfg.dev)
        unknown = sorted(set(collect_labels(dev_ds)) - set(labels.labels))
        if unknown:
            raise ValueError(f"dev data {cfg.dev} has labels {unknown} never seen in training data {cfg.train}")
        datasets["dev"] = dev_ds
    if cfg.context_length:
        _require_context({"--train": (cfg.train, train_ds), **({"--dev": (cfg.dev, datasets["dev"])} if cfg.dev else {})}, cfg.context_length, cfg.documents)
    windows = encode_for_training(
        train_ds, resolve_model_path(cfg.init_from or cfg.encoder), labels, cfg.max_length, cfg.stride, cfg.case_markers, cfg.context_length
    )
    # one order per seed, the same in a resumed run: file order, then blocks shuffled once
    datasets["train"] = windows.repartition(target_num_rows_per_block=WINDOWS_PER_BLOCK).randomize_block_order(seed=cfg.seed).materialize()
    sentences = train_ds.count()
    del train_ds, windows  # the sentences live on as windows: free their blocks before training
    plan = TrainPlan(cfg, labels.labels, datasets["train"].count(), has_dev=bool(cfg.dev))
    if plan.windows_per_rank == 0:
        raise ValueError(f"{plan.windows} training windows are too few for {cfg.num_workers} workers")
    dev_note = f", {datasets['dev'].count():,} dev sentences" if cfg.dev else ""
    steps_note = f"; {plan.total_steps:,} steps ({plan.steps_per_epoch:,} per epoch)"
    reading.finish(f"{sentences:,} training sentences -> {plan.windows:,} windows{dev_note}; {len(labels.labels)} labels{steps_note}")

    monitor = TrainingMonitor(plan.epochs, tensorboard_dir(cfg.output))
    trainer = TorchTrainer(
        train_worker.train_loop_per_worker,
        train_loop_config=train_worker.pack(dataclasses.replace(plan, progress=monitor.board)),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=cfg.resources_per_worker()),
        datasets=datasets,
        # train: each worker streams its own share; dev: each reads it whole, keeps its share.
        # In order, so every run (and every rank's view of dev) sees the rows the same way.
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=RUN_NAME,
            **_storage_args(cfg.run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep, checkpoint_score_attribute="score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=list(callbacks or []),
        ),
    )
    with monitor:
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    return _write_output(cfg, result, labels, time.perf_counter() - started, datasets.get("dev"))


def calibrate(model_dir: str, cfg: TrainConfig, dev_ds) -> dict | None:
    """Fits the temperature of the model in ``model_dir`` on dev and saves its inference settings
    (``inference.json``) beside it; returns the dev calibration (None without dev: temperature 1)."""
    tokenizer = load_tokenizer(model_dir)
    if dev_ds is None:
        write_settings(model_dir, inference_settings(cfg, tokenizer))
        return None
    rows = sorted(dev_ds.take_all(), key=lambda r: (r["source"], r["line"]))
    stage = Stage(f"fitting the score temperature on {len(rows):,} dev sentences", unit="windows")
    predictor = Predictor(load_tagger(model_dir), tokenizer, inference_settings(cfg, tokenizer), device="cpu")
    _, calibration = score_labelled(
        predictor,
        [list(r["tokens"]) for r in rows],
        [list(r["tags"]) for r in rows],
        contexts=[(r["context_left"], r["context_right"]) for r in rows],
        on_batch=lambda done, total: stage.update(done, total=total),
        fit=True,
    )
    stage.finish(f"temperature {calibration['temperature']:.3f}: entity-score ECE {calibration['ece_before']:.3f} -> {calibration['ece']:.3f}")
    write_settings(model_dir, inference_settings(cfg, tokenizer, calibration["temperature"]))
    return calibration


def _write_output(cfg: TrainConfig, result, labels: LabelMap, wall_time: float, dev_ds=None) -> dict:
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: (cm[1]["score"], -cm[1]["epoch"]))
    with result.checkpoint.as_directory() as latest:
        state = torch.load(os.path.join(latest, STATE_FILE), map_location="cpu", weights_only=True)
    history = json.loads(state["history"])
    with contextlib.ExitStack() as stack:
        # s3:// output: assembled in a local folder, then uploaded file by file
        out_dir = stack.enter_context(tempfile.TemporaryDirectory()) if is_s3(cfg.output) else cfg.output
        os.makedirs(out_dir, exist_ok=True)
        with best_ckpt.as_directory() as best_dir:
            for name in os.listdir(best_dir):
                if name != STATE_FILE:
                    shutil.copy2(os.path.join(best_dir, name), os.path.join(out_dir, name))
        with open(os.path.join(out_dir, "labels.json"), "w") as fh:
            json.dump(list(labels.labels), fh, indent=1)
        summary = _summary(cfg, history, best_metrics, labels, wall_time)
        summary["calibration"] = calibrate(out_dir, cfg, dev_ds)
        with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        write_report(out_dir, training_report(summary, cfg.output))
        if is_s3(cfg.output):
            fs, dest = fsspec_filesystem(cfg.output), strip_scheme(cfg.output).rstrip("/")
            for name in sorted(os.listdir(out_dir), key=lambda n: n == "metrics.json"):  # metrics.json last: "done"
                fs.put_file(os.path.join(out_dir, name), f"{dest}/{name}")
    return summary


def _summary(cfg: TrainConfig, history: list[dict], best_metrics: dict, labels: LabelMap, wall_time: float) -> dict:
    train_tokens = sum(h["train_tokens"] for h in history)
    train_time = sum(h["train_time_s"] for h in history)
    return {
        "best_epoch": best_metrics["epoch"],
        "best_dev_f1": best_metrics["dev_f1"] if cfg.dev else None,
        "epochs": history,
        "wall_time_s": wall_time,
        "train_tokens": train_tokens,
        "train_tokens_per_s": train_tokens / train_time if train_time else 0.0,
        "labels": list(labels.labels),
        "config": dataclasses.asdict(cfg),
    }
