"""Data-parallel fine-tuning on Ray Train, fed by Ray Data.

The driver reads and validates the data (in Ray Data tasks), fixes the label
map, tokenizes into windows (Ray Data tasks again), works out the workers
(``plan_workers``) and the steps (``TrainPlan``) and starts a ``TorchTrainer``.
Each worker builds the tagger, wraps it with ``prepare_model`` (DDP, device),
streams its own share of the windows (Ray Data's streaming split) into
length-grouped batches (``pipelines.training.batches``), and after every epoch (or
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
import os
import shutil
import tempfile
import time

import torch
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ner_core.calibration import score_labelled
from ner_core.predictor import Predictor, write_settings
from ner_core.labels import LabelMap
from ner_core.labels import LabelMismatchError, resolve_head_labels
from ner_core.model import LEGACY_DECODER_ATTENTION, is_token_classification_config
from ner_core.model_files import read_saved_model
from ner_core.tagger import load_tagger, load_tokenizer, resolve_model_path
from pipelines.cluster import require_reachable
from ner_core.report import training_report, write_report
from pipelines.console.terminal import Stage
from pipelines.console.jobs import TrainingMonitor, tensorboard_dir
from pipelines.labelled_data import collect_labels, encode_for_training, read_labelled, rows_with_context
from pipelines.training import worker as train_worker
from pipelines.storage import arrow_filesystem, fsspec_filesystem, is_s3, join_path, path_exists, strip_scheme
from pipelines.training.config import RUN_NAME, STATE_FILE, WINDOWS_PER_BLOCK, TrainConfig, TrainPlan, inference_settings, plan_workers


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
    """``cfg`` as the workers need it: local data files and model folders as absolute paths,
    and an ``--init-from`` tagger's architecture, decoder attention and case markers.

    Ray Train workers, Ray Data tasks and Tune trials run in directories of Ray's own, so
    ``--train ../data/train.txt`` or ``--decoder ./my_decoder`` would be looked up there (a
    decoder then on the hub); a name that is no local path (``distilbert-base-uncased``,
    ``minilm``) is left as is.
    The saved tagger is read from its files (no model load), so the plan, the workers
    and the run's ``metrics.json`` all say what is actually trained, and a folder that
    is not a whole saved tagger is a one-line error before any Ray work.
    """
    local = {k: os.path.abspath(v) for k in ("encoder", "decoder", "init_from") if (v := getattr(cfg, k)) and os.path.exists(v)}
    local |= {k: os.path.abspath(v) for k in ("train", "dev") if (v := getattr(cfg, k)) and not is_s3(v)}
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
