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
from pipelines.console import Stage, echo
from pipelines.labelled_data import read_labelled


@dataclass
class EvaluateConfig:
    model: str | None = field(default=None, metadata={"help": "trained model directory"})
    data: str | None = field(default=None, metadata={"help": "labelled data: CoNLL, Parquet or JSONL (tokens/tags); local or s3://"})
    json: str | None = field(default=None, metadata={"help": "also write the metrics to this JSON file"})
    report: str | None = field(default=None, metadata={"help": "also write report.html (per-type table, confusion matrix of entity types) into this folder"})
    scheme: str = field(default="IOB2", metadata={"help": "tag scheme of the data: IOB1 | IOB2 | IOBES"})
    repair_invalid: bool = False
    token_column: int = 0
    tag_column: int = -1
    max_length: int | None = field(default=None, metadata={"help": "window length (default: the training run's)"})
    stride: int | None = None
    context_length: int | None = field(default=None, metadata={"help": "document-context subwords per side (default: the training run's)"})
    documents: str | None = field(default=None, metadata={"help": f"where document context finds documents: {' | '.join(DOCUMENT_SOURCES)} (default: the training run's)"})
    batch_size: int | None = None
    torch_threads: int | None = None
    mixed_precision: str = field(default="auto", metadata={"help": "as for jobs.tag: auto (fp32 on CPU) | bf16 | none; score in the precision you tag in"})
    runtime: str = field(default="torch", metadata={"help": f"as for jobs.tag: {' | '.join(RUNTIMES)}; score on the engine you tag with"})

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
        cfg.data, cfg.scheme, cfg.repair_invalid, cfg.token_column, cfg.tag_column, settings.context_length, documents
    ).take_all()
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
