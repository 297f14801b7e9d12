"""Evaluating a saved tagger on any labelled data set.

The data is read by the same Ray Data readers as training and predicted by
the same ``ner_core.predictor.Predictor``, with the model's own inference settings
(``inference.json``), so the figures equal the training job's dev evaluation and
describe what ``jobs.tag`` writes. The report adds how far the entity scores can
be trusted (``ner_core.calibration``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ner_core.conll import DOCUMENT_SOURCES, check_documents
from ner_core.calibration import score_labelled
from ner_core.labels import SCHEMES
from ner_core.metrics import evaluate_tags
from ner_core.precision import check_mixed_precision
from ner_core.predictor import Predictor
from ner_core.report import evaluation_report, write_report
from ner_core.runtime import RUNTIMES, check_runtime
from ner_core.tagger import resolve_model_path
from pipelines.console.terminal import Stage, echo
from pipelines.labelled_data import read_labelled
from pipelines.options import ADVANCED, IO, MODEL, RESOURCES, option


@dataclass
class EvaluateConfig:
    model: str | None = field(default=None, metadata=option("trained model directory", group=MODEL, essential=True))
    data: str | None = field(default=None, metadata=option("labelled data: CoNLL, Parquet or JSONL (tokens/tags); local or s3://", group=IO, essential=True))
    json: str | None = field(default=None, metadata=option("also write the metrics to this JSON file", group=IO, essential=True))
    report: str | None = field(default=None, metadata=option("also write report.html (per-type table, confusion matrix of entity types) into this folder", group=IO, essential=True))
    scheme: str = field(default="IOB2", metadata=option("tag scheme of the data: IOB1 | IOB2 | IOBES", group=IO, essential=True))
    repair_invalid: bool = field(default=False, metadata=option("repair invalid tag sequences (e.g. O I-PER) instead of failing", group=IO))
    token_column: int = field(default=0, metadata=option("CoNLL column holding the token", group=IO))
    tag_column: int = field(default=-1, metadata=option("CoNLL column holding the tag", group=IO))
    max_length: int | None = field(default=None, metadata=option("window length (default: the training run's)", group=MODEL))
    stride: int | None = field(default=None, metadata=option("subword overlap between windows (default: the training run's)", group=MODEL))
    context_length: int | None = field(default=None, metadata=option("document-context subwords per side (default: the training run's)", group=MODEL))
    documents: str | None = field(default=None, metadata=option(f"where document context finds documents: {' | '.join(DOCUMENT_SOURCES)} (default: the training run's)", group=MODEL))
    batch_size: int | None = field(default=None, metadata=option("windows per forward pass", group=ADVANCED))
    torch_threads: int | None = field(default=None, metadata=option("torch threads (default: the CPUs Ray gives the job)", group=RESOURCES))
    mixed_precision: str = field(default="auto", metadata=option("as for jobs.tag: auto (fp32 on CPU) | bf16 | none; score in the precision you tag in", group=MODEL, essential=True, metavar="MODE"))
    runtime: str = field(default="torch", metadata=option(f"as for jobs.tag: {' | '.join(RUNTIMES)}; score on the engine you tag with", group=MODEL, essential=True))

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        check_runtime(self.runtime, self.mixed_precision)
        if self.documents is not None:
            check_documents(self.documents)
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")


def training_config(model_dir: str) -> dict:
    """The settings ``jobs.train`` saved with the model (empty for a model from elsewhere)."""
    path = os.path.join(resolve_model_path(model_dir), "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh).get("config", {})


def run_evaluation(cfg: EvaluateConfig) -> dict:
    if not cfg.model or not cfg.data:
        raise ValueError("both --model and --data are required")
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    predictor = Predictor.load(
        cfg.model, runtime=cfg.runtime, mixed_precision=cfg.mixed_precision, threads=torch.get_num_threads(),
        max_length=cfg.max_length, stride=cfg.stride, context_length=cfg.context_length, batch_size=cfg.batch_size,
    )  # fmt: skip
    settings = predictor.settings
    trained = training_config(cfg.model)
    # document context exactly as in training (the settings come from the model's metrics.json)
    documents = cfg.documents or trained.get("documents") or "markers"
    rows = read_labelled(
        cfg.data, scheme=cfg.scheme, repair_invalid=cfg.repair_invalid, token_column=cfg.token_column, tag_column=cfg.tag_column,
        context_words=settings.context_length, documents=documents,
    ).take_all()  # fmt: skip
    rows.sort(key=lambda r: (r["source"], r["line"]))
    if settings.context_length and not any(r["context_left"] or r["context_right"] for r in rows):
        echo(f"warning: the model reads {settings.context_length} subwords of document context, but {cfg.data} has no -DOCSTART- document markers: scored without context (--documents datelines infers them in Reuters news)")
    stage = Stage(f"predicting {len(rows):,} sentences", unit="windows")
    gold = [list(r["tags"]) for r in rows]
    pred, calibration = score_labelled(
        predictor,
        [list(r["tokens"]) for r in rows],
        gold,
        contexts=[(r["context_left"], r["context_right"]) for r in rows],
        on_batch=lambda done, total: stage.update(done, total=total),
    )
    stage.finish()
    metrics = evaluate_tags(gold, pred, scheme="IOB2", mode="strict")
    metrics["calibration"] = calibration
    metrics["model"], metrics["data"] = cfg.model, cfg.data
    metrics["settings"] = {"max_length": settings.max_length, "stride": settings.stride, "context_length": settings.context_length, "temperature": settings.temperature, "documents": documents, "runtime": cfg.runtime}
    if cfg.report:
        metrics["report"] = write_report(cfg.report, evaluation_report(metrics))
    if cfg.json:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
        with open(cfg.json, "w") as fh:
            json.dump(metrics, fh, indent=1)
    return metrics
