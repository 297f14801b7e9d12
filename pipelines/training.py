"""Data-parallel fine-tuning on Ray Train, fed by Ray Data.

The driver reads and validates the data (in Ray Data tasks), fixes the label
map, tokenizes into windows (Ray Data tasks again) and starts a
``TorchTrainer``. Each worker builds the tagger, wraps it with
``prepare_model`` (DDP, device), trains on its part of the windows in
length-grouped batches, and after every epoch rank 0 evaluates dev with
seqeval and reports a checkpoint. The best checkpoint by dev F1 becomes the
output model.

Resume is Ray Train's own: a run with the same name and storage path picks up
its checkpoint manager and ``ray.train.get_checkpoint()`` returns the latest
checkpoint, which holds model, optimizer, scheduler and the epoch reached.
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

import numpy as np
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ner_core.alignment import pad_windows, Window
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
from pipelines.labelled_data import collect_labels, encode_for_training, read_labelled, rows_with_context
from pipelines.progress import Reporter
from pipelines.storage import arrow_filesystem, fsspec_filesystem, is_s3, strip_scheme

RUN_NAME = "train"
TRAIN_STRIDE = 32  # the default overlap of training windows
STATE_FILE = "train_state.pt"


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Every training setting and its default (YAML keys and flags use these names)."""

    train: str | None = field(default=None, metadata=_help("labelled training data: CoNLL file(s), Parquet or JSONL with tokens/tags; local or s3://"))
    dev: str | None = field(default=None, metadata=_help("labelled dev data for per-epoch evaluation and model selection"))
    output: str = field(default="outputs/train", metadata=_help("output directory, local or s3://: final model, tokenizer, labels.json, metrics.json"))
    storage: str | None = field(default=None, metadata=_help("this run's checkpoints and Ray Train run directory: s3://... or a folder every node mounts (default: <output>/_ray; on a cluster of several nodes it must be s3:// or shared)"))
    storage_shared: bool = field(default=False, metadata=_help("the local --storage path is a shared mount (NFS, EFS) that every node sees at the same path"))
    arch: str = field(default="encoder-decoder", metadata=_help("encoder-decoder | encoder"))
    encoder: str = field(default="minilm", metadata=_help("encoder name or directory ('minilm' = the packaged all-MiniLM-L6-v2)"))
    decoder: str | None = field(default=None, metadata=_help("decoder name or directory for encoder-decoder (default: the encoder)"))
    init_from: str | None = field(default=None, metadata=_help("a tagger saved by jobs.train (local folder) to fine-tune further instead of building one: its architecture, decoder attention, tokenizer and case markers are used, and --arch/--encoder/--decoder/--decoder-attention/--case-markers are not"))
    new_head: bool = field(default=False, metadata=_help("with --init-from: a new, untrained classifier for the training data's labels (transfer to another label set, e.g. CoNLL-2003 to WNUT-2017); without it the saved head is kept and its labels must be the data's"))
    decoder_attention: str = field(default="bidirectional", metadata=_help("encoder-decoder only: the decoder's self-attention, bidirectional | causal (HF's decoder as is)"))
    head: str = field(default="linear", metadata=_help("linear | crf: a CRF over each window's words, decoded by Viterbi (never breaks IOB2)"))
    scheme: str = field(default="IOB2", metadata=_help("tag scheme of the input data: IOB1 | IOB2 | IOBES (converted to IOB2)"))
    repair_invalid: bool = field(default=False, metadata=_help("repair invalid tag sequences (e.g. O I-PER) instead of failing"))
    token_column: int = field(default=0, metadata=_help("CoNLL column holding the token"))
    tag_column: int = field(default=-1, metadata=_help("CoNLL column holding the tag"))
    case_markers: bool = field(default=False, metadata=_help("mark capitalised / all-caps words with extra tokens: gives an uncased encoder (e.g. minilm) the case it lowercases away"))
    epochs: int = 3
    batch_size: int = field(default=32, metadata=_help("windows per optimizer micro-step, per worker"))
    grad_accum_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = field(default=128, metadata=_help("subword window length; longer sentences become overlapping windows"))
    stride: int | None = field(default=None, metadata=_help("subword overlap between consecutive windows (default 32, or half the window where that is not shorter; saved with the model)"))
    context_length: int = field(default=0, metadata=_help("document context: up to this many subwords of the sentence's own document on each side, read but not labelled (CoNLL files with -DOCSTART-; 0: off)"))
    documents: str = field(default="markers", metadata=_help("where document context finds a CoNLL file's documents: markers (its -DOCSTART- lines) | datelines (the same where a file has them, else inferred from Reuters datelines, for CoNLL-2003 copies that lost their markers)"))
    eval_batch_size: int = 64
    num_workers: int = field(default=2, metadata=_help("Ray Train workers (data-parallel)"))
    use_gpu: bool = False
    cpus_per_worker: float = field(default=0.5, metadata=_help("CPUs reserved per worker; fractional so workers and Ray Data tasks fit together"))
    worker_resources: str | dict[str, float] | None = field(default=None, metadata=_help("custom Ray resources per worker, NAME=AMOUNT[,...] (e.g. gpu_node=1): pins workers to the node types that declare them"))
    torch_threads: int = field(default=1, metadata=_help("torch intra-op threads per worker"))
    mixed_precision: str = field(default="auto", metadata=_help("auto (bf16/fp16 on GPU, fp32 on CPU) | bf16 (GPU or CPU) | fp16 (GPU) | none"))
    seed: int = 42
    log_every: int = field(default=50, metadata=_help("print progress every N batches on rank 0 (0: never)"))
    resume: bool = field(default=False, metadata=_help("continue the interrupted run in --output from its last checkpoint"))
    max_failures: int = field(default=2, metadata=_help("worker failures tolerated; each restarts from the last checkpoint"))
    checkpoints_to_keep: int = 2
    fail_after_epoch: int | None = field(default=None, metadata=_help("testing: raise in the workers after this epoch's checkpoint (once)", cli=True))

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
        for name in ("epochs", "batch_size", "grad_accum_steps", "num_workers", "max_length", "torch_threads", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0:
            raise ValueError("cpus_per_worker must be > 0")
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


# ----------------------------------------------------------------- worker side


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_batches(rows: list[dict], epoch: int, cfg: TrainConfig, rank: int, world: int) -> list[list[dict]]:
    """This rank's length-grouped batches for one epoch.

    All ranks draw the same seeded permutation, take every world-th row and
    cut to the same count, so every rank runs the same number of steps (DDP
    needs that) and the order depends only on seed and epoch. Rows are then
    sorted by length inside chunks of 50 batches, so a batch pads little,
    and the batches are shuffled.
    """
    rng = np.random.default_rng(cfg.seed + 1000 * epoch)
    per_rank = len(rows) // world
    mine = [rows[i] for i in rng.permutation(len(rows))[rank::world][:per_rank]]
    chunk = cfg.batch_size * 50
    batches = []
    for start in range(0, len(mine), chunk):
        group = sorted(mine[start : start + chunk], key=lambda r: r["length"])
        batches += [group[i : i + cfg.batch_size] for i in range(0, len(group), cfg.batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _rows(shard, columns: tuple[str, ...]) -> list[dict]:
    """All rows of a dataset shard as plain Python values, read in large Arrow batches.

    (Row-by-row iteration costs a conversion per row: minutes for CoNLL.)
    """
    rows: list[dict] = []
    for batch in shard.iter_batches(batch_size=8192, batch_format="pyarrow"):
        cols = [batch.column(c).to_pylist() for c in columns]
        rows.extend(dict(zip(columns, values)) for values in zip(*cols))
    return rows


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    return autocast_dtype(cfg.mixed_precision, device.type)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def inference_settings(cfg: TrainConfig, tokenizer, temperature: float = 1.0):
    """The settings the model is scored with on dev and saved with (``inference.json``), so that
    ``jobs.evaluate`` and ``jobs.tag`` predict exactly as dev scoring did."""
    asked = {"max_length": cfg.max_length, "stride": cfg.stride, "context_length": cfg.context_length, "temperature": temperature, "batch_size": cfg.eval_batch_size}
    settings, _ = resolve_settings({"stride": TRAIN_STRIDE}, specials=special_token_count(tokenizer), overrides=asked)
    return settings


def _evaluate(model, tokenizer, dev_rows, cfg: TrainConfig, device, dtype) -> dict:
    predictor = Predictor(_unwrap(model), tokenizer, inference_settings(cfg, tokenizer), device=device, autocast_dtype=dtype)
    pred = predictor.predict([r["tokens"] for r in dev_rows], contexts=[(r["context_left"], r["context_right"]) for r in dev_rows])
    return evaluate_tags([r["tags"] for r in dev_rows], pred, scheme="IOB2", mode="strict")


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config["cfg"])
    labels = LabelMap(tuple(config["labels"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # rank 0's progress goes to the driver's console through the job's progress board
    progress = Reporter(config.get("progress") if rank == 0 else None)
    torch.set_num_threads(cfg.torch_threads)
    _seed_everything(cfg.seed)

    if cfg.init_from:
        tokenizer, model = load_tokenizer(cfg.init_from), load_tagger(cfg.init_from)
        if cfg.new_head:
            replace_head(model, labels)
        elif tagger_labels(model).labels != labels.labels:
            model.config.id2label, model.config.label2id = dict(labels.id2label), dict(labels.label2id)  # HF's LABEL_k named after the data
    else:
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
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]

    train_rows = sorted(_rows(ray.train.get_dataset_shard("train"), ("input_ids", "labels", "length", "key")), key=lambda r: r["key"])
    dev_rows = []
    if rank == 0 and config["has_dev"]:
        dev_rows = sorted(_rows(ray.train.get_dataset_shard("dev"), ("tokens", "tags", "source", "line", "context_left", "context_right")), key=lambda r: (r["source"], r["line"]))

    steps_per_epoch = math.ceil(len(_epoch_batches(train_rows, 0, cfg, rank, world)) / cfg.grad_accum_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_rows)} training windows are too few for {world} workers")
    total_steps = steps_per_epoch * cfg.epochs

    from transformers import get_linear_schedule_with_warmup

    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    dtype = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_epoch, history, resumed = 0, [], False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            from safetensors.torch import load_file

            _unwrap(model).load_state_dict(load_file(os.path.join(ckpt_dir, "model.safetensors"), device=str(device)), strict=False)
            state = torch.load(os.path.join(ckpt_dir, STATE_FILE), map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, resumed = int(state["epoch"]) + 1, json.loads(state["history"]), True

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for epoch in range(start_epoch, cfg.epochs):
        _seed_everything(cfg.seed + 7919 * epoch + rank)
        model.train()
        batches = _epoch_batches(train_rows, epoch, cfg, rank, world)
        t0 = time.perf_counter()
        tokens, loss_sum = 0, 0.0
        recent_loss, recent_batches = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            windows = [Window(r["input_ids"], [1] * len(r["input_ids"]), [], r["labels"], 0, 0) for r in batch]
            padded = {k: torch.tensor(v, device=device) for k, v in pad_windows(windows, pad_id, 8).items()}
            tokens += int(padded["attention_mask"].sum())
            last_micro = (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == len(batches)
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                    loss = model(**padded).loss / cfg.grad_accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += float(loss.detach()) * cfg.grad_accum_steps
            recent_loss, recent_batches = recent_loss + float(loss.detach()) * cfg.grad_accum_steps, recent_batches + 1
            if last_micro:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if rank == 0 and cfg.log_every and ((i + 1) % cfg.log_every == 0 or i + 1 == len(batches)):
                # progress for overnight runs, in the worker's log file (and the driver's console
                # with --verbose); the console's progress line comes through `progress`
                elapsed = time.perf_counter() - t0
                print(
                    f"epoch {epoch + 1}/{cfg.epochs} batch {i + 1}/{len(batches)} loss {loss_sum / (i + 1):.4f} "
                    f"{tokens / elapsed:.0f} tokens/s (rank 0)",
                    flush=True,
                )
            if rank == 0:
                event = {"kind": "step", "epoch": epoch, "batch": i + 1, "batches": len(batches), "loss": loss_sum / (i + 1), "recent_loss": recent_loss / recent_batches, "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
                if progress.push(event, throttled=i + 1 < len(batches)):
                    recent_loss, recent_batches = 0.0, 0
        train_time = time.perf_counter() - t0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            count = torch.tensor([tokens], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(count)
            tokens = int(count.item())

        metrics = {"epoch": epoch, "train_loss": loss_sum / max(len(batches), 1), "train_tokens": tokens, "train_time_s": train_time, "tokens_per_s": tokens / train_time if train_time else 0.0}
        if rank == 0:
            if dev_rows:
                t1 = time.perf_counter()
                dev = _evaluate(model, tokenizer, dev_rows, cfg, device, dtype)
                metrics.update({"dev_f1": dev["f1"], "dev_precision": dev["precision"], "dev_recall": dev["recall"], "dev_per_type": dev["per_type"], "dev_confusion": dev["confusion"], "eval_time_s": time.perf_counter() - t1})
        # the checkpoint score: dev F1, or (no dev set) the lowest training loss
        metrics["score"] = metrics.get("dev_f1", -metrics["train_loss"])
        if rank == 0:
            history.append(metrics)
            progress.push({"kind": "epoch", **metrics}, wait=True)
            with tempfile.TemporaryDirectory() as tmp:
                save_tagger(_unwrap(model), tokenizer, tmp)
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "history": json.dumps(history)},
                    os.path.join(tmp, STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch_{epoch:03d}")
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"epoch_{epoch:03d}")
        if cfg.fail_after_epoch is not None and epoch == cfg.fail_after_epoch and not resumed:
            # every rank waits for rank 0's upload to end: a rank raising at once would have
            # the controller stop the group while rank 0 still writes the checkpoint to S3
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            raise RuntimeError(f"injected failure after epoch {epoch} (fail_after_epoch)")


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
    if is_s3(run_dir):
        fs = fsspec_filesystem(run_dir)
        fs.invalidate_cache()  # a run started in this process may have written since the last listing
        return bool(fs.exists(f"{strip_scheme(run_dir)}/{RUN_NAME}"))
    return os.path.exists(os.path.join(run_dir, RUN_NAME))


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


def run_training(cfg: TrainConfig) -> dict:
    """Train, select the best epoch by dev F1, write the output directory; returns the summary."""
    started = time.perf_counter()
    if not cfg.train:
        raise ValueError("no training data: set --train")
    cfg = resolve_models(cfg)
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
    train_ds = read_labelled(cfg.train, cfg.scheme, cfg.repair_invalid, cfg.token_column, cfg.tag_column, cfg.context_length, cfg.documents).materialize()
    labels = _labels_for(cfg, train_ds)
    datasets = {}
    if cfg.dev:
        dev_ds = read_labelled(cfg.dev, cfg.scheme, cfg.repair_invalid, cfg.token_column, cfg.tag_column, cfg.context_length, cfg.documents).materialize()
        unknown = sorted(set(collect_labels(dev_ds)) - set(labels.labels))
        if unknown:
            raise ValueError(f"dev data {cfg.dev} has labels {unknown} never seen in training data {cfg.train}")
        datasets["dev"] = dev_ds
    if cfg.context_length:
        _require_context({"--train": (cfg.train, train_ds), **({"--dev": (cfg.dev, datasets["dev"])} if cfg.dev else {})}, cfg.context_length, cfg.documents)
    datasets["train"] = encode_for_training(
        train_ds, resolve_model_path(cfg.init_from or cfg.encoder), labels, cfg.max_length, cfg.stride, cfg.case_markers, cfg.context_length
    ).materialize()
    dev_note = f", {datasets['dev'].count():,} dev sentences" if cfg.dev else ""
    reading.finish(f"{train_ds.count():,} training sentences -> {datasets['train'].count():,} windows{dev_note}; {len(labels.labels)} labels")

    monitor = TrainingMonitor(cfg.epochs, tensorboard_dir(cfg.output))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "labels": list(labels.labels), "has_dev": bool(cfg.dev), "progress": monitor.board},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=cfg.resources_per_worker()),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(
            name=RUN_NAME,
            **_storage_args(cfg.run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep, checkpoint_score_attribute="score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
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
