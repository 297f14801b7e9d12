"""Bulk tagging on Ray Data: files in, per-token IOB labels and entity spans out.

The stages, all streaming (memory does not grow with corpus size):

1. ``TaggingInput`` reads Parquet/JSONL files in blocks; unparseable rows
   become error rows (see ``tag_input``).
2. ``preprocess`` (Ray Data tasks): row -> words (+ character offsets for raw
   text) -> subword windows; rows that cannot be tagged become error rows.
3. ``TagActor`` (an actor pool, model loaded once per actor): batched,
   length-sorted inference on the windows, merged back to one label per word.
4. ``TaggedOutputSink``: writes each block's rows as pieces per source file
   into staging; the driver commits a source file once all its rows are
   there (see ``tag_store``), which is what makes a killed job resumable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import Datasink

from ner_core.alignment import Window, encode_batch
from ner_core.documents import BadRow, Document, document_from_text, document_from_tokens
from ner_core.precision import autocast_dtype, check_mixed_precision
from ner_core.runtime import RUNTIMES, check_runtime
from ner_core.spans import extract_spans
from pipelines.cluster import parse_resources, require_reachable
from pipelines.console import verbose
from pipelines.job_console import TaggingMonitor, estimate_rows, tagging_plan
from pipelines.storage import expand_inputs
from pipelines.tag_input import ERROR, INTERNAL_PREFIX, OUTPUT_COLUMNS, RAW, ROW, SRC, TaggingInput, decode_type, scan_jsonl_columns
from pipelines.tag_store import OutputStore, Piece, jsonl_bytes, parquet_bytes, source_key

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
ENTITY_TYPE = pa.struct([("type", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())])
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl"}
# Settings that change what is written: a resumed run must use the same ones.
# model_identity: a hash of the model's files (a retrained model at the same path is another
# model); max_length: the window length used (after clamping to the model's limit);
# precision: what --mixed-precision means on the actors' device; runtime: the engine (int8 moves labels).
_OUTPUT_SETTINGS = ("model", "model_identity", "input", "format", "output_format", "text_column", "tokens_column", "id_column", "max_length", "stride", "precision", "runtime")


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class TagConfig:
    """Every setting of ``jobs.tag`` and its default."""

    model: str | None = field(default=None, metadata=_help("trained model directory (local or s3://), or 'minilm' for an untrained smoke test"))
    input: str | None = field(default=None, metadata=_help("input file, folder or glob; local or s3://"))
    output: str | None = field(default=None, metadata=_help("output folder; local or s3://"))
    format: str | None = field(default=None, metadata=_help("input format: parquet | jsonl (default: from the file extensions)"))
    output_format: str = field(default="parquet", metadata=_help("parquet | jsonl"))
    text_column: str = field(default="text", metadata=_help("column with raw text (split into words with character offsets)"))
    tokens_column: str | None = field(default=None, metadata=_help("column with pre-split words (list of strings); replaces --text-column"))
    id_column: str | None = field(default=None, metadata=_help("column identifying a row; copied into error records"))
    # Rows per actor call. Large, because windows are length-sorted within a call: the
    # more rows sorted together, the less padding per forward pass (512 -> 2048 rows was
    # 1.5x faster on CPU for CoNLL-length sentences; the rows cost a few MB).
    batch_size: int = field(default=2048, metadata=_help("rows per actor call (windows are length-sorted within it)"))
    window_batch_size: int = field(default=64, metadata=_help("windows per forward pass"))
    actors: str = field(default="1", metadata=_help("actor pool size: N, or MIN-MAX to autoscale"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs reserved per actor (fractional allowed; keep some free for reading)"))
    gpus_per_actor: float = field(default=0.0, metadata=_help("GPUs per actor; fractional to share a GPU between actors"))
    cpus_per_task: float = field(default=0.25, metadata=_help("CPUs per read/preprocess/write task; differs from --cpus-per-actor so preprocessing is not fused into the actors"))
    actor_resources: str | dict[str, float] | None = field(default=None, metadata=_help("custom Ray resources per actor, NAME=AMOUNT[,...] (e.g. gpu_node=1): pins actors to the node types that declare them"))
    task_resources: str | dict[str, float] | None = field(default=None, metadata=_help("custom Ray resources per read/preprocess/write task, NAME=AMOUNT[,...]"))
    output_shared: bool = field(default=False, metadata=_help("the local --output is a shared mount (NFS, EFS) that every node sees at the same path; needed for a local --output on a cluster of several nodes"))
    torch_threads: int | None = field(default=None, metadata=_help("torch threads per actor (default: its CPUs, at least 1)"))
    max_length: int = field(default=256, metadata=_help("subword window length (at most the model's maximum)"))
    stride: int = field(default=64, metadata=_help("subword overlap between windows of long documents"))
    rows_per_block: int = field(default=1024, metadata=_help("rows per read block (memory per block in flight)"))
    rows_per_file: int = field(default=10_000, metadata=_help("rows gathered per output file (fewer when a source file ends)"))
    mixed_precision: str = field(default="auto", metadata=_help("auto (bf16 on GPU, fp32 on CPU) | bf16 (GPU, or CPU with AVX512-BF16/AMX: ~3x faster) | fp16 (GPU) | none"))
    runtime: str = field(default="torch", metadata=_help(f"model engine: {' | '.join(RUNTIMES)} (ONNX Runtime on CPU, fp32 or int8 weights; check its F1 with jobs.evaluate --runtime first)"))
    read_tasks: int | None = field(default=None, metadata=_help("parallel read tasks, at most one per input file (default: one per file; 1 reads files in order)"))
    read_attempts: int = field(default=4, metadata=_help("attempts to read a file that fails part-way (dropped connection, 5xx) before it is reported failed"))
    read_retry_delay_s: float = field(default=1.0, metadata=_help("wait before the second read attempt; doubles for each further one"))
    commit_every_s: float = field(default=5.0, metadata=_help("how often finished input files are committed while the job runs"))
    overwrite: bool = field(default=False, metadata=_help("delete an existing output folder's contents first"))

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.output_format not in FORMATS:
            raise ValueError(f"--output-format must be one of {FORMATS}, got {self.output_format!r}")
        check_mixed_precision(self.mixed_precision)
        check_runtime(self.runtime, self.mixed_precision)
        if self.runtime != "torch" and self.gpus_per_actor:
            raise ValueError(f"--runtime {self.runtime} runs on CPU; with --gpus-per-actor use --runtime torch")
        if self.mixed_precision == "fp16" and not self.gpus_per_actor:
            raise ValueError("--mixed-precision fp16 needs --gpus-per-actor > 0; on CPU use bf16 or none")
        for name in ("batch_size", "window_batch_size", "max_length", "rows_per_block", "rows_per_file", "read_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.stride < 0:
            raise ValueError("--stride must be >= 0")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("--cpus-per-actor and --gpus-per-actor must be >= 0")
        self.actor_range()
        parse_resources(self.actor_resources)
        parse_resources(self.task_resources)

    def actor_range(self) -> tuple[int, int]:
        """``"2"`` -> (2, 2); ``"1-4"`` -> (1, 4)."""
        text = str(self.actors).replace(",", "-")
        try:
            parts = [int(p) for p in text.split("-")]
        except ValueError:
            raise ValueError(f"--actors must be N or MIN-MAX, got {self.actors!r}") from None
        lo, hi = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)
        if len(parts) > 2 or lo < 1 or hi < lo:
            raise ValueError(f"--actors must be N or MIN-MAX with 1 <= MIN <= MAX, got {self.actors!r}")
        return lo, hi


def infer_format(paths: list[str]) -> str:
    formats = set()
    for p in paths:
        name = p.lower()
        ext = next((e for e in sorted(_EXTENSIONS, key=len, reverse=True) if name.endswith(e)), None)
        if ext is None:
            raise ValueError(f"cannot tell the format of {p}; pass --format parquet|jsonl")
        formats.add(_EXTENSIONS[ext])
    if len(formats) > 1:
        raise ValueError(f"input mixes formats {sorted(formats)}; tag them in separate runs or pass --format")
    return formats.pop()


# --- models on the workers ----------------------------------------------------


def model_identity(model: str) -> str:
    """A hash of the model's files (ETags on S3, contents locally): changes when the model is retrained."""
    from ner_core.tagger import resolve_model_path
    from pipelines.storage import tree_identity

    return tree_identity(resolve_model_path(model))


@lru_cache(maxsize=4)
def local_model_dir(model: str, identity: str) -> str:
    """A local directory holding version ``identity`` (``model_identity``) of ``model``.

    s3:// models are copied once per node and version into a cache keyed by the URI *and*
    the files' identity: a retrained model uploaded to the same URI gets a new cache entry
    instead of the old copy being served forever. The copy is checked against ``identity``
    after the download, so a model replaced mid-run fails loudly instead of mixing versions.
    """
    from ner_core.tagger import resolve_model_path
    from pipelines.storage import fsspec_filesystem, is_s3, strip_scheme

    if not is_s3(model):
        return resolve_model_path(model)
    import hashlib
    import shutil
    import tempfile

    cache = os.path.join(os.path.expanduser("~/.cache/ray-ner/models"), f"{hashlib.sha1(model.encode()).hexdigest()[:16]}-{identity}")
    if not os.path.isdir(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cache))
        fsspec_filesystem(model).get(strip_scheme(model).rstrip("/") + "/", tmp + "/", recursive=True)
        if model_identity(model) != identity:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"model {model} changed while this job was running; run the job again")
        try:
            os.rename(tmp, cache)
        except OSError:  # another process on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


@lru_cache(maxsize=4)
def _tokenizer(model: str, identity: str):
    from ner_core.tagger import load_tokenizer

    return load_tokenizer(local_model_dir(model, identity))


# --- stage 2: preprocessing (Ray Data tasks) ------------------------------------


def _raw_row(table: pa.Table, i: int) -> str:
    row = {k: v for k, v in table.slice(i, 1).to_pylist()[0].items() if not k.startswith(INTERNAL_PREFIX)}
    return json.dumps(row, ensure_ascii=False, default=str)


def preprocess(batch: pa.Table, *, model: str, model_identity: str, text_column: str, tokens_column: str | None, max_length: int, stride: int) -> pa.Table:
    """Rows -> words (+ character offsets) -> subword windows, as extra columns."""
    column = tokens_column or text_column
    errors = batch.column(ERROR).to_pylist()
    raws = batch.column(RAW).to_pylist()
    clashes = [c for c in OUTPUT_COLUMNS if c in batch.column_names and c != tokens_column]
    values = batch.column(column).to_pylist() if column in batch.column_names else None
    present = [c for c in batch.column_names if not c.startswith(INTERNAL_PREFIX)]
    docs: list[Document | None] = []
    for i in range(batch.num_rows):
        doc = None
        if errors[i] is None:
            try:
                if clashes:
                    raise BadRow(f"input column {clashes[0]!r} clashes with an output column of the same name")
                row = {column: values[i]} if values is not None else dict.fromkeys(present)
                doc = document_from_tokens(row, column) if tokens_column else document_from_text(row, column)
            except BadRow as exc:
                errors[i], raws[i] = str(exc), raws[i] or _raw_row(batch, i)
        docs.append(doc)
    good = [i for i, d in enumerate(docs) if d is not None]
    windows: list[list[Window]] = [[] for _ in docs]
    if good:
        encoded = encode_batch(_tokenizer(model, model_identity), [docs[i].words for i in good], max_length=max_length, stride=stride)
        for i, wins in zip(good, encoded):
            windows[i] = wins
    tokens = [d.words if d is not None else None for d in docs]
    starts = [[w.start for w in d.offsets] if d is not None and d.offsets is not None else None for d in docs]
    ends = [[w.end for w in d.offsets] if d is not None and d.offsets is not None else None for d in docs]
    texts = [d.text if d is not None else None for d in docs]
    out = batch.drop_columns([c for c in ("tokens", ERROR, RAW) if c in batch.column_names])
    return (
        out.append_column("tokens", pa.array(tokens, pa.list_(pa.string())))
        .append_column(ERROR, pa.array(errors, pa.string()))
        .append_column(RAW, pa.array(raws, pa.string()))
        .append_column("__text", pa.array(texts, pa.string()))
        .append_column("__starts", pa.array(starts, pa.list_(pa.int32())))
        .append_column("__ends", pa.array(ends, pa.list_(pa.int32())))
        .append_column("__win_ids", pa.array([[w.input_ids for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))))
        .append_column("__win_words", pa.array([[[-1 if x is None else x for x in w.word_ids] for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))))
        .append_column("__win_span", pa.array([[[w.first_word, w.end_word] for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))))
    )


# --- stage 3: inference (actor pool) ----------------------------------------------


class TagActor:
    """Holds one model; tags the windows of a batch of rows in length-sorted forward passes."""

    def __init__(self, model: str, model_identity: str, window_batch_size: int, max_length: int, stride: int, use_gpu: bool, torch_threads: int, mixed_precision: str, runtime: str = "torch", progress=None):
        import torch

        from pipelines.progress import Reporter

        from ner_core.inference import InferenceSettings, WordTagger
        from ner_core.runtime import load_runtime

        torch.set_num_threads(max(1, torch_threads))
        path = local_model_dir(model, model_identity)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        dtype = autocast_dtype(mixed_precision, device)
        settings = InferenceSettings(max_length=max_length, stride=stride, batch_size=window_batch_size)
        engine = load_runtime(path, runtime, threads=max(1, torch_threads))  # torch, or ONNX Runtime (exported once per model version, cached)
        self.tagger = WordTagger(engine, _tokenizer(model, model_identity), settings, device=device, autocast_dtype=dtype)
        self.progress = Reporter(progress)  # rows tagged, for the driver's progress line

    def _windows(self, ids, words, spans) -> list[Window]:
        return [
            Window(list(i), [1] * len(i), [None if x < 0 else x for x in w], None, s[0], s[1])
            for i, w, s in zip(ids, words, spans)
        ]

    def _count(self, rows: int):
        """Progress within a call, as the share of its rows whose windows are done, sent at most twice a second."""
        sent, last = [0], [time.monotonic()]

        def on_batch(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 0.5 or done == total:
                n = rows * done // max(total, 1) - sent[0]
                self.progress.add("rows", n)
                sent[0], last[0] = sent[0] + n, time.monotonic()

        return on_batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column(ERROR).to_pylist()
        raws = batch.column(RAW).to_pylist()
        tokens = batch.column("tokens").to_pylist()
        good = [i for i, e in enumerate(errors) if e is None]
        cols = {c: batch.column(c).to_pylist() for c in ("__win_ids", "__win_words", "__win_span")}
        per_doc = {i: self._windows(cols["__win_ids"][i], cols["__win_words"][i], cols["__win_span"][i]) for i in good}
        ids: dict[int, list[int]] = {}
        try:
            ids.update(zip(good, self.tagger.predict_windows([per_doc[i] for i in good], [len(tokens[i]) for i in good], on_batch=self._count(len(good)))))
        except Exception:  # noqa: BLE001 - find the row that breaks the batch; the others still get tagged
            for i in good:
                try:
                    ids[i] = self.tagger.predict_windows([per_doc[i]], [len(tokens[i])])[0]
                except Exception as exc:  # noqa: BLE001
                    errors[i], raws[i] = f"tagging failed: {type(exc).__name__}: {exc}", raws[i] or _raw_row(batch, i)
        self.progress.add("rows", batch.num_rows - len(good))  # rows that failed before the model
        texts = batch.column("__text").to_pylist()
        starts, ends = batch.column("__starts").to_pylist(), batch.column("__ends").to_pylist()
        labels: list[list[str] | None] = [None] * batch.num_rows
        entities: list[list[dict] | None] = [None] * batch.num_rows
        subwords = [0] * batch.num_rows
        for i, label_ids in ids.items():
            if errors[i] is not None:
                continue
            labels[i] = self.tagger.decode(label_ids)
            offsets = None
            if texts[i] is not None:
                from ner_core.text import Word

                offsets = [Word(t, s, e) for t, s, e in zip(tokens[i], starts[i], ends[i])]
            entities[i] = Document(tokens[i], texts[i], offsets).entities(extract_spans(labels[i]))
            subwords[i] = sum(len(w) for w in cols["__win_ids"][i])
        out = batch.drop_columns([c for c in batch.column_names if c.startswith(("__win_", "__starts", "__ends", "__text")) or c in (ERROR, RAW)])
        return (
            out.append_column("labels", pa.array(labels, pa.list_(pa.string())))
            .append_column("entities", pa.array(entities, pa.list_(ENTITY_TYPE)))
            .append_column(ERROR, pa.array(errors, pa.string()))
            .append_column(RAW, pa.array(raws, pa.string()))
            .append_column("__subwords", pa.array(subwords, pa.int64()))
        )


# --- stage 4: output --------------------------------------------------------------


class TaggedOutputSink(Datasink):
    """Ray Data datasink: each block's rows -> one tagged piece and one error piece per source file."""

    def __init__(
        self,
        output: str,
        output_format: str,
        sources: dict[str, str],
        id_column: str | None,
        rows_per_file: int = 10_000,
        input_format: str = "parquet",
        jsonl_types: dict[str, str | None] | None = None,
    ):
        self.output = output
        self.input_format = input_format
        self.jsonl_types = jsonl_types or {}  # JSONL -> Parquet: field -> its type for the job, None: JSON text
        self.rows_per_file = rows_per_file
        self.output_format = output_format
        self.sources = sources
        self.id_column = id_column
        self.totals: dict[str, int] = {}

    def get_name(self) -> str:
        return "TaggedOutput"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks, ctx) -> dict[str, int]:
        store = OutputStore(self.output)
        stats = {"rows_written": 0, "rows_failed": 0, "words": 0, "subwords": 0}
        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return stats
        # JSONL blocks may disagree on a column's type (null in one, string in another)
        block = pa.concat_tables(tables, promote_options="permissive")
        for key in pc.unique(block.column(SRC)).to_pylist():
            part = block.filter(pc.equal(block.column(SRC), key))
            failed_mask = pc.is_valid(part.column(ERROR))
            self._write_ok(store, key, part.filter(pc.invert(failed_mask)), stats)
            self._write_errors(store, key, part.filter(failed_mask), stats)
        return stats

    def _write_ok(self, store: OutputStore, key: str, rows: pa.Table, stats: dict) -> None:
        if rows.num_rows == 0:
            return
        first = pc.min(rows.column(ROW)).as_py()
        stats["rows_written"] += rows.num_rows
        stats["words"] += pc.sum(pc.list_value_length(rows.column("tokens"))).as_py() or 0
        stats["subwords"] += pc.sum(rows.column("__subwords")).as_py() or 0
        rows = rows.sort_by(ROW)
        if self.input_format == "jsonl":
            # Input fields from each row's original line, so values come back exactly as read.
            fields = [_input_fields(raw) for raw in rows.column(RAW).to_pylist()]
            outputs = rows.select(list(OUTPUT_COLUMNS))
            if self.output_format == "parquet":
                typed = self._typed_fields(fields)
                data = parquet_bytes(pa.Table.from_arrays([*typed.columns, *outputs.columns], names=[*typed.column_names, *outputs.column_names]))
            else:
                data = jsonl_bytes([{**f, **o} for f, o in zip(fields, outputs.to_pylist())])
        else:
            table = rows.drop_columns([c for c in rows.column_names if c.startswith(INTERNAL_PREFIX)])
            data = parquet_bytes(table) if self.output_format == "parquet" else jsonl_bytes(table.to_pylist())
        store.write_piece(key, Piece("ok", first, rows.num_rows, self.output_format), data)

    def _typed_fields(self, fields: list[dict]) -> pa.Table:
        """JSONL fields as Parquet columns of the job's types: the same in every output file.

        A field without one type across the whole input (``3`` here, ``"d-4"`` there) is
        stored as the JSON text of each value (null stays null): ``json.loads`` gives the value back.
        """
        names = list(self.jsonl_types) + [n for n in dict.fromkeys(k for f in fields for k in f) if n not in self.jsonl_types]
        columns = {}
        for name in names:
            values = [f.get(name) for f in fields]
            encoded = self.jsonl_types.get(name)
            if encoded is not None:
                try:
                    columns[name] = pa.array(values, decode_type(encoded))
                    continue
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    log.warning("field %r does not fit its type %s here; stored as JSON text", name, decode_type(encoded))
            columns[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
        return pa.table(columns) if columns else pa.table({})

    def _ids(self, rows: pa.Table) -> list | None:
        if not self.id_column:
            return None
        if self.id_column in rows.column_names:
            return rows.column(self.id_column).to_pylist()
        if self.input_format != "jsonl":
            return None
        return [(_input_fields(raw) if raw else {}).get(self.id_column) for raw in rows.column(RAW).to_pylist()]

    def _write_errors(self, store: OutputStore, key: str, rows: pa.Table, stats: dict) -> None:
        if rows.num_rows == 0:
            return
        rows = rows.sort_by(ROW)
        ids = self._ids(rows)
        records = []
        for j, (row, reason, raw) in enumerate(zip(rows.column(ROW).to_pylist(), rows.column(ERROR).to_pylist(), rows.column(RAW).to_pylist())):
            record = {"source": self.sources.get(key, key), "row": row, "reason": reason, "raw": raw}
            if ids is not None:
                record["id"] = ids[j]
            records.append(record)
        stats["rows_failed"] += len(records)
        store.write_piece(key, Piece("err", records[0]["row"], len(records), "jsonl"), jsonl_bytes(records))

    def on_write_complete(self, write_result) -> None:
        for stats in write_result.write_returns:
            for k, v in (stats or {}).items():
                self.totals[k] = self.totals.get(k, 0) + v


def _input_fields(raw: str) -> dict:
    """A JSONL row's own fields, as read (output columns and internal ``__`` names aside); {} if not an object."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if not k.startswith(INTERNAL_PREFIX) and k not in OUTPUT_COLUMNS}


# --- the driver ---------------------------------------------------------------------


class TagRunError(ValueError):
    """The job cannot run (bad settings, unreadable model or input); reported as one line."""


def _check_model(model: str) -> dict:
    """Fail fast, on the driver, when the model cannot be loaded (before any cluster work)."""
    from transformers import AutoConfig

    try:
        identity = model_identity(model)
        path = local_model_dir(model, identity)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        _tokenizer(model, identity)
    except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
        raise TagRunError(f"cannot load model {model!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    limits = [getattr(c, "max_position_embeddings", None) for c in (config, getattr(config, "encoder", None), getattr(config, "decoder", None))]
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    return {
        "identity": identity,
        "model_type": config.model_type,
        "labels": [config.id2label[i] for i in sorted(config.id2label)],
        "max_positions": min(limits) if limits else None,
    }


def _precision(cfg: TagConfig) -> str:
    """The arithmetic the actors use, as recorded with the output: ``auto`` on CPU is fp32."""
    if cfg.mixed_precision == "none" or (cfg.mixed_precision == "auto" and not cfg.gpus_per_actor):
        return "fp32"
    return cfg.mixed_precision if cfg.mixed_precision != "auto" else "auto (GPU: bf16, or fp16 where unsupported)"


def _check_job_settings(store: OutputStore, cfg: TagConfig, settings: dict) -> None:
    previous = store.read_json(store.path("_job.json"))
    if previous is None:
        store.write_json(store.path("_job.json"), settings)
        return
    changed = [k for k in _OUTPUT_SETTINGS if previous.get(k) != settings.get(k)]
    if changed:
        k = changed[0]
        what = (
            f"another version of model {settings['model']} (files {previous.get(k)}, now {settings.get(k)})"
            if k == "model_identity"
            else f"{k}={previous.get(k)!r} (now {settings.get(k)!r})"
        )
        raise TagRunError(f"{cfg.output} holds output made with {what}; use a new --output, or --overwrite to replace it")


def _resources_arg(spec) -> dict:
    resources = parse_resources(spec)
    return {"resources": resources} if resources else {}


def run_tagging(cfg: TagConfig, progress: bool = True) -> dict:
    """Tag every input file not yet committed in ``cfg.output``; returns the manifest."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if not cfg.model or not cfg.input or not cfg.output:
        raise TagRunError("--model, --input and --output are required")
    # Read and write tasks put staging pieces and _expected.json under --output from any node
    # and the driver commits from its own listing, so every node must see the same folder.
    require_reachable(
        cfg.output,
        shared=cfg.output_shared,
        needs={"CPU": cfg.cpus_per_task, "GPU": cfg.gpus_per_actor, **parse_resources(cfg.task_resources), **parse_resources(cfg.actor_resources)},
        describe=f"--output {cfg.output}",
        what="tagging tasks",
        fix="use an s3:// --output, or --output-shared true if it is a mount every node shares",
    )
    started = time.time()
    model_info = _check_model(cfg.model)
    paths = expand_inputs(cfg.input, tuple(_EXTENSIONS))
    fmt = cfg.format or infer_format(paths)
    store = OutputStore(cfg.output)
    if cfg.overwrite:
        for name in store.listdir(store.path()):
            store.remove(store.path(name))
    max_length = cfg.max_length
    if model_info["max_positions"] and max_length > model_info["max_positions"]:
        log.warning("--max-length %d is beyond the model's %d positions; using %d", max_length, model_info["max_positions"], model_info["max_positions"])
        max_length = model_info["max_positions"]
    # What is recorded (and compared on resume) is what the run uses.
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    settings.update(format=fmt, max_length=max_length, model_identity=model_info["identity"], precision=_precision(cfg))
    task_args = {"num_cpus": cfg.cpus_per_task, **_resources_arg(cfg.task_resources)}
    jsonl_types = None
    if fmt == "jsonl" and cfg.output_format == "parquet":
        # One Parquet type per field for the whole output, fixed when it was started.
        jsonl_types = (store.read_json(store.path("_job.json")) or {}).get("jsonl_types")
        if jsonl_types is None:
            jsonl_types = scan_jsonl_columns(paths, cfg.rows_per_block, cfg.tokens_column or cfg.text_column, bool(cfg.tokens_column), task_args)
        settings["jsonl_types"] = jsonl_types
        settings["json_encoded_columns"] = [name for name, t in jsonl_types.items() if t is None]
        if settings["json_encoded_columns"]:
            log.warning("fields with more than one type, stored in Parquet as JSON text: %s", settings["json_encoded_columns"])
    _check_job_settings(store, cfg, settings)

    keys = {source_key(p): p for p in paths}
    store.commit_ready()  # a previous run may have finished files it did not get to commit
    done = store.done_keys()
    pending = [(p, k) for k, p in keys.items() if k not in done]
    store.discard_unfinished({k for _, k in pending})
    log.info("%d input files, %d already done, %d to tag", len(paths), len(paths) - len(pending), len(pending))
    if progress:
        tagging_plan(cfg, len(paths), len(paths) - len(pending), fmt, estimate_rows([p for p, _ in pending], fmt))

    sink = TaggedOutputSink(cfg.output, cfg.output_format, keys, cfg.id_column, cfg.rows_per_file, input_format=fmt, jsonl_types=jsonl_types)
    if pending:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress and verbose()  # Ray Data's own bars; ours is TaggingMonitor's line
        monitor = TaggingMonitor(estimate_rows([p for p, _ in pending], fmt), show=progress)
        lo, hi = cfg.actor_range()
        threads = cfg.torch_threads or max(1, int(cfg.cpus_per_actor))
        use_gpu = cfg.gpus_per_actor > 0
        # One read task per file by default: Ray Data's own default splits each file's
        # blocks into many small ones and then cannot fuse preprocessing into the read;
        # on 2 cores that cost ~12% of the run (123 s -> 110 s for 50k rows in 5 files).
        read_kwargs = {"override_num_blocks": cfg.read_tasks or len(pending)}
        reader = TaggingInput(
            pending, fmt, cfg.output, cfg.rows_per_block, cfg.tokens_column or cfg.text_column, bool(cfg.tokens_column),
            read_attempts=cfg.read_attempts, retry_delay_s=cfg.read_retry_delay_s,
        )  # fmt: skip
        ds = ray.data.read_datasource(reader, **task_args, **read_kwargs)
        ds = ds.map_batches(
            preprocess,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"model": cfg.model, "model_identity": model_info["identity"], "text_column": cfg.text_column, "tokens_column": cfg.tokens_column, "max_length": max_length, "stride": cfg.stride},
            **task_args,
        )
        ds = ds.map_batches(
            TagActor,
            batch_format="pyarrow",
            batch_size=cfg.batch_size,
            fn_constructor_kwargs={
                "model": cfg.model,
                "model_identity": model_info["identity"],
                "window_batch_size": cfg.window_batch_size,
                "max_length": max_length,
                "stride": cfg.stride,
                "use_gpu": use_gpu,
                "torch_threads": threads,
                "mixed_precision": cfg.mixed_precision,
                "runtime": cfg.runtime,
                "progress": monitor.board,
            },
            compute=ActorPoolStrategy(min_size=lo, max_size=hi),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
            **_resources_arg(cfg.actor_resources),
        )
        stop = threading.Event()
        committer = threading.Thread(target=_commit_loop, args=(store, stop, cfg.commit_every_s), daemon=True)
        committer.start()
        try:
            with monitor:
                ds.write_datasink(sink, ray_remote_args=task_args)
        finally:
            stop.set()
            committer.join()
        store.commit_ready()
    for key in store.done_keys() & set(store.listdir(store.path("_staging"))):
        store.remove(store.staging(key))  # a write retried after its file was committed
    totals = store.totals()
    # Files whose read kept failing: reported, their rows dropped, retried whole by the next run.
    files_failed = store.take_failed(set(keys) - store.done_keys())
    failed_keys = {source_key(f["source"]) for f in files_failed}
    for f in files_failed:
        log.error("input file failed, not tagged (run the job again to retry it): %s: %s", f["source"], f["reason"])
    uncommitted = sorted(set(keys) - store.done_keys() - failed_keys)
    if uncommitted:
        raise TagRunError(f"{len(uncommitted)} input files did not complete (first: {keys[uncommitted[0]]}); run the job again to finish them")
    elapsed = time.time() - started
    run_stats = dict(sink.totals)
    words = run_stats.get("words", 0)
    manifest = {
        **{k: totals[k] for k in ("rows_read", "rows_written", "rows_failed")},
        "files": totals["files"],
        "files_failed": files_failed,
        "json_encoded_columns": settings.get("json_encoded_columns", []),
        "model": cfg.model,
        "model_labels": model_info["labels"],
        "settings": settings,
        "this_run": {**run_stats, "files_tagged": len(pending), "seconds": round(elapsed, 2), "words_per_s": round(words / elapsed, 1) if elapsed else None},
    }
    store.write_json(store.path("_manifest.json"), manifest)
    return manifest


def _commit_loop(store: OutputStore, stop: threading.Event, every_s: float) -> None:
    """Commit finished source files while the job runs, so a kill loses only files in flight."""
    while not stop.wait(every_s):
        try:
            store.commit_ready()
        except Exception as exc:  # noqa: BLE001 - a failed listing is retried next round and at the end
            log.warning("commit pass failed (will retry): %s", exc)


def summary_line(manifest: dict, output: str) -> str:
    run = manifest["this_run"]
    rate = f"{run['words_per_s']:,.0f} words/s" if run.get("words_per_s") else "nothing new to tag"
    failed = manifest.get("files_failed") or []
    failed_note = f"; {len(failed)} files FAILED (see files_failed in _manifest.json; run again to retry them)" if failed else ""
    return (
        f"tagged {manifest['rows_written']:,} rows, {manifest['rows_failed']:,} errors (of {manifest['rows_read']:,} read, "
        f"{manifest['files']} files); this run: {run.get('words', 0):,} words in {run['seconds']:.1f}s, {rate} -> {output}{failed_note}"
    )
