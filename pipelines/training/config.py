"""Settings of the training job: what the user sets (``TrainConfig``), the workers worked out from
the cluster (``plan_workers``) and the one object each worker is given (``TrainPlan``)."""


from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import ray

from ner_core.alignment import special_token_count
from ner_core.predictor import resolve_settings
from ner_core.conll import check_documents
from ner_core.labels import SCHEMES
from ner_core.model import DECODER_ATTENTION
from ner_core.model_files import HEADS
from ner_core.precision import check_mixed_precision
from ner_core.tagger import ARCHS
from pipelines.cluster import parse_resources
from pipelines.options import ADVANCED, IO, MODEL, RESOURCES, TRAINING, option
from pipelines.storage import is_s3


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
    progress: Any = None  # rank 0's progress board (pipelines.console.progress)

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

def inference_settings(cfg: TrainConfig, tokenizer, temperature: float = 1.0):
    """The settings the model is scored with on dev and saved with (``inference.json``), so that
    ``jobs.evaluate`` and ``jobs.tag`` predict exactly as dev scoring did."""
    asked = {"max_length": cfg.max_length, "stride": cfg.stride, "context_length": cfg.context_length, "temperature": temperature, "batch_size": cfg.eval_batch_size}
    settings, _ = resolve_settings({"stride": TRAIN_STRIDE}, specials=special_token_count(tokenizer), overrides=asked)
    return settings

