"""Settings of the tagging job: what the user sets (``TagConfig``) and what the stages use (``TagPlan``).

``TagConfig`` is the command line (``jobs.tag`` builds its flags from the fields).
``TagPlan`` is worked out from it once, on the driver, after the model and the
input have been looked at (the window length clamped to the model's positions,
the column to read, the actor pool's size and threads), and is the one object
the reader, preprocessing and the actors receive: no stage works a value out again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ner_core.inference import InferenceSettings
from ner_core.precision import check_mixed_precision
from ner_core.predictor import resolve_settings
from ner_core.runtime import RUNTIMES, check_runtime
from pipelines.cluster import parse_range, parse_resources
from pipelines.options import ADVANCED, IO, MODEL, RESOURCES, option
from pipelines.storage import is_s3

if TYPE_CHECKING:
    from pipelines.tagging.model import ModelInfo

FORMATS = ("parquet", "jsonl")
PREPROCESS = ("auto", "tasks", "actor")
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl"}
# Settings that change what is written: a resumed run must use the same ones.
# model_identity: a hash of the model's files (a retrained model at the same path is another
# model); max_length: the window length used (after clamping to the model's limit);
# precision: what --mixed-precision means on the actors' device; runtime: the engine (int8 moves labels).
# max_length, stride, temperature: the inference settings in use (the model's own unless overridden);
# min_score and all_scores change which labels and fields are written.
OUTPUT_SETTINGS = ("model", "model_identity", "input", "format", "output_format", "text_column", "tokens_column", "id_column", "max_length", "stride", "temperature", "min_score", "all_scores", "precision", "runtime")


class TagRunError(ValueError):
    """The job cannot run (bad settings, unreadable model or input); reported as one line."""


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a failure is named in a one-line error or an error record."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@dataclass
class TagConfig:
    """Every setting of ``jobs.tag`` and its default."""

    model: str | None = field(default=None, metadata=option("trained model folder (local or s3://); 'minilm': an untrained smoke test", group=MODEL, essential=True))
    input: str | None = field(default=None, metadata=option("input file, folder or glob; local or s3://", group=IO, essential=True))
    output: str | None = field(default=None, metadata=option("output folder; local or s3://", group=IO, essential=True))
    format: str | None = field(default=None, metadata=option("input format: parquet | jsonl (default: from the file extensions)", group=IO))
    output_format: str = field(default="parquet", metadata=option("parquet | jsonl", group=IO, essential=True))
    text_column: str = field(default="text", metadata=option("input column of raw text", group=IO, essential=True))
    tokens_column: str | None = field(default=None, metadata=option("input column of pre-split words, instead of text", group=IO, essential=True))
    id_column: str | None = field(default=None, metadata=option("column identifying a row; copied into error records", group=IO))
    overwrite: bool = field(default=False, metadata=option("empty an existing output folder first", group=IO, essential=True))
    output_shared: bool = field(default=False, metadata=option("the local --output is a shared mount (NFS, EFS) every node sees at the same path; needed for a local --output on a cluster of several nodes", group=IO))
    rows_per_file: int = field(default=10_000, metadata=option("rows per output file (fewer when a source file ends)", group=IO))
    max_length: int | None = field(default=None, metadata=option("subword window length (default: the model's own, saved by jobs.train, else 256; at most the model's positions)", group=MODEL))
    stride: int | None = field(default=None, metadata=option("subword overlap between windows of long documents (default: the model's own, else 64; shorter than the window)", group=MODEL))
    min_score: float | None = field(default=None, metadata=option("drop entities scored under this (0-1)", group=MODEL, essential=True))
    all_scores: bool = field(default=False, metadata=option("also write every label's probability per token (column all_scores)", group=MODEL))
    mixed_precision: str = field(default="auto", metadata=option("auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | none", group=MODEL, essential=True, metavar="MODE"))
    runtime: str = field(default="torch", metadata=option(f"model engine: {' | '.join(RUNTIMES)} (check F1 with evaluate first)", group=MODEL, essential=True))
    actors: str = field(default="1", metadata=option("model copies tagging in parallel: N, or MIN-MAX to autoscale", group=RESOURCES, essential=True))
    cpus_per_actor: float = field(default=1.0, metadata=option("CPUs per model copy", group=RESOURCES, essential=True))
    gpus_per_actor: float = field(default=0.0, metadata=option("GPUs per model copy; fractional to share a GPU", group=RESOURCES, essential=True))
    torch_threads: int | None = field(default=None, metadata=option("threads per model copy (default: its CPUs, at least 1)", group=RESOURCES))
    cpus_per_task: float = field(default=0.25, metadata=option("CPUs per reading, preprocessing or writing task", group=RESOURCES))
    actor_resources: str | dict[str, float] | None = field(default=None, metadata=option("custom Ray resources per model copy, NAME=AMOUNT[,...] (e.g. gpu_node=1): runs them only on the nodes that declare them", group=RESOURCES))
    task_resources: str | dict[str, float] | None = field(default=None, metadata=option("custom Ray resources per reading/preprocessing/writing task, NAME=AMOUNT[,...]", group=RESOURCES))
    preprocess: str = field(default="auto", metadata=option("where text becomes model input: actor (beside the model) | tasks (separate tasks) | auto (actor on CPU, tasks on GPU)", group=RESOURCES))
    # Three batch sizes, three units: rows handed to a model copy at once (--batch-size),
    # then windows and positions per forward pass inside it. Rows are sorted by length
    # within a call, so a larger call pads less; not larger, as it raises memory.
    batch_size: int = field(default=2048, metadata=option("rows handed to a model copy at once (sorted by length within it: larger pads less, uses more memory)", group=ADVANCED))
    # Short sentences go in large batches and long ones in small (ner_core.inference.length_batches).
    window_batch_size: int = field(default=64, metadata=option("windows per forward pass, at most", group=ADVANCED))
    batch_tokens: int | None = field(default=None, metadata=option("positions per forward pass (windows x padded length), at most (default: 8192 on GPU, 2048 on CPU)", group=ADVANCED))
    rows_per_block: int = field(default=1024, metadata=option("rows read at a time (memory per block in flight)", group=ADVANCED))
    read_tasks: int | None = field(default=None, metadata=option("reading tasks, at most one per input file (default: by size, small files packed together; 1 reads files in order)", group=ADVANCED))
    read_attempts: int = field(default=4, metadata=option("attempts to read a file that fails part-way (dropped connection, 5xx) before it is reported failed", group=ADVANCED))
    read_retry_delay_s: float = field(default=1.0, metadata=option("wait before the second read attempt; doubles for each further one", group=ADVANCED))
    commit_every_s: float = field(default=5.0, metadata=option("how often finished input files are committed while the job runs", group=ADVANCED))

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.output_format not in FORMATS:
            raise ValueError(f"--output-format must be one of {FORMATS}, got {self.output_format!r}")
        check_mixed_precision(self.mixed_precision)
        check_runtime(self.runtime, self.mixed_precision)
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"--preprocess must be one of {PREPROCESS}, got {self.preprocess!r}")
        if self.runtime != "torch" and self.gpus_per_actor:
            raise ValueError(f"--runtime {self.runtime} runs on CPU; with --gpus-per-actor use --runtime torch")
        if self.mixed_precision == "fp16" and not self.gpus_per_actor:
            raise ValueError("--mixed-precision fp16 needs --gpus-per-actor > 0; on CPU use bf16 or none")
        for name in ("batch_size", "window_batch_size", "batch_tokens", "max_length", "rows_per_block", "rows_per_file", "read_attempts"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.stride is not None and self.stride < 0:
            raise ValueError("--stride must be >= 0")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise ValueError(f"--min-score must be between 0 and 1, got {self.min_score}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("--cpus-per-actor and --gpus-per-actor must be >= 0")
        self.actor_range()
        parse_resources(self.actor_resources)
        parse_resources(self.task_resources)

    @property
    def column(self) -> str:
        """The input column the tagger reads: pre-split words if given, else raw text."""
        return self.tokens_column or self.text_column

    @property
    def pretokenized(self) -> bool:
        return self.tokens_column is not None

    def actor_range(self) -> tuple[int, int]:
        """``"2"`` -> (2, 2); ``"1-4"`` -> (1, 4)."""
        return parse_range(self.actors, "--actors")


def infer_format(paths: list[str]) -> str:
    formats = set()
    for p in paths:
        name = p.lower()
        ext = next((e for e in sorted(EXTENSIONS, key=len, reverse=True) if name.endswith(e)), None)
        if ext is None:
            raise ValueError(f"cannot tell the format of {p}; pass --format parquet|jsonl")
        formats.add(EXTENSIONS[ext])
    if len(formats) > 1:
        raise ValueError(f"input mixes formats {sorted(formats)}; tag them in separate runs or pass --format")
    return formats.pop()


def arithmetic(cfg: TagConfig) -> str:
    """The arithmetic the actors use, as recorded with the output: ``auto`` on CPU is fp32."""
    if cfg.mixed_precision == "none" or (cfg.mixed_precision == "auto" and not cfg.gpus_per_actor):
        return "fp32"
    return cfg.mixed_precision if cfg.mixed_precision != "auto" else "auto (GPU: bf16, or fp16 where unsupported)"


@dataclass(frozen=True)
class TagPlan:
    """What the stages of one run use, each value worked out once (``TagPlan.resolve``)."""

    model: str
    model_identity: str  # hash of the model's files: workers load exactly this version
    format: str  # of the input
    column: str
    pretokenized: bool
    inference: InferenceSettings  # windows (the model's own, clamped to its positions), batching, temperature
    min_score: float | None
    all_scores: bool
    min_actors: int
    max_actors: int
    torch_threads: int
    use_gpu: bool
    mixed_precision: str
    runtime: str
    preprocess_in_actor: bool
    notes: tuple[str, ...] = ()  # where a setting in use differs from the one asked for or saved

    @property
    def max_length(self) -> int:
        return self.inference.max_length

    @property
    def stride(self) -> int:
        return self.inference.stride

    @classmethod
    def resolve(cls, cfg: TagConfig, model: ModelInfo, fmt: str) -> "TagPlan":
        """``ValueError`` for settings the model cannot run with (a stride not shorter than the window)."""
        lo, hi = cfg.actor_range()
        # Rows are whole documents: windows get the words around them already, no document context.
        inference, notes = resolve_settings(
            {**model.saved_settings, "context_length": 0},
            specials=model.special_tokens,
            max_positions=model.max_positions,
            overrides={"max_length": cfg.max_length, "stride": cfg.stride, "batch_size": cfg.window_batch_size, "batch_tokens": cfg.batch_tokens},
        )
        # a local folder by its absolute path: actors run in the Ray worker's folder, not the driver's
        local = not is_s3(cfg.model) and os.path.exists(cfg.model)
        return cls(
            model=os.path.abspath(cfg.model) if local else cfg.model,
            model_identity=model.identity,
            format=fmt,
            column=cfg.column,
            pretokenized=cfg.pretokenized,
            inference=inference,
            min_score=cfg.min_score,
            all_scores=cfg.all_scores,
            min_actors=lo,
            max_actors=hi,
            torch_threads=cfg.torch_threads or max(1, int(cfg.cpus_per_actor)),
            use_gpu=cfg.gpus_per_actor > 0,
            mixed_precision=cfg.mixed_precision,
            runtime=cfg.runtime,
            preprocess_in_actor=cfg.preprocess == "actor" or (cfg.preprocess == "auto" and not cfg.gpus_per_actor),
            notes=tuple(notes),
        )
