"""Each job's plan, live progress and summary, in the words of that job.

``pipelines.console.terminal`` knows how to draw; this module knows what a training,
tagging or evaluation run should say: the plan before any work, the stage
lines while it runs, and the summary with every path a user needs next.
"""

from __future__ import annotations

import os
import time

import ray

from pipelines.console.terminal import Stage, echo, format_duration, print_plan, print_summary
from pipelines.console.progress import Follower


def cluster_line() -> str:
    """``local Ray, 2 CPUs`` or ``Ray cluster at ADDR, 3 nodes, 48 CPUs, 4 GPUs``."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = f"Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "local Ray"
    parts = [where]
    if nodes > 1:
        parts.append(f"{nodes} nodes")
    parts.append(f"{cpus:g} CPUs")
    if gpus:
        parts.append(f"{gpus:g} GPUs")
    return ", ".join(parts)


def ray_logs_hint() -> str:
    node = ray._private.worker._global_node  # noqa: SLF001 - the one place Ray exposes the session dir
    logs = os.path.join(node.get_session_dir_path(), "logs") if node is not None else "/tmp/ray/session_latest/logs"
    return f"Ray's own logs: {logs} (or run with --verbose)"


# --- training ----------------------------------------------------------------------------


def training_plan(cfg, workers) -> None:
    """``workers``: the run's ``pipelines.training.config.WorkerPlan`` (what was chosen, and why)."""
    if cfg.init_from:
        model = f"{cfg.arch} tagger from {cfg.init_from}" + (", new classifier for the data's labels" if cfg.new_head else "")
    else:
        model = f"{cfg.arch} tagger, encoder {cfg.encoder}" + (f", decoder {cfg.decoder or cfg.encoder}" if cfg.arch == "encoder-decoder" else "")
    device = f"{workers.num_workers} worker(s) x {workers.cpus_per_worker:g} CPU" + (" + 1 GPU" if cfg.use_gpu else "")
    device += f", {workers.torch_threads} torch thread(s) each ({workers.why})"
    length = f"{cfg.max_steps:,} steps (--max-steps)" if cfg.max_steps else f"{cfg.epochs} epochs"
    print_plan(
        f"ray-ner train: {model}",
        [
            ("data", f"train {cfg.train}; dev {cfg.dev or 'none (keeps the lowest training loss)'} ({cfg.scheme})"),
            ("schedule", f"{length}, batch {cfg.batch_size} per worker, lr {cfg.lr:g}, max length {cfg.max_length}" + (", case markers" if cfg.case_markers else "")),
            ("resources", f"{device}; {cluster_line()}"),
            ("output", cfg.output),
        ],
    )


def tensorboard_dir(output: str) -> str | None:
    """``<output>/tensorboard`` for a local output, written live by the driver; none for s3:// outputs."""
    from pipelines.storage import is_s3

    return None if is_s3(output) else os.path.join(os.path.abspath(output), "tensorboard")


class TrainingMonitor:
    """Draws rank 0's progress (one line per epoch) and writes it to TensorBoard as it arrives.

    Used as a context manager around ``trainer.fit()``; ``board`` goes into the
    train loop's config so rank 0 can report to it (``pipelines.console.progress.Reporter``).
    """

    def __init__(self, epochs: int, tensorboard_dir: str | None):
        self.epochs = epochs
        self.tensorboard_dir = tensorboard_dir
        self.writer = None
        if tensorboard_dir:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir, flush_secs=5)
        self.stage: Stage | None = Stage("starting Ray Train workers", unit=None)
        self.epoch: int | None = None
        self.follower = Follower(self._on_events)

    @property
    def board(self):
        return self.follower.board

    def __enter__(self) -> "TrainingMonitor":
        self.follower.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.__exit__(*exc)
        if self.stage is not None:
            self.stage.finish(ended="done" if exc[0] is None else "stopped")
        if self.writer is not None:
            self.writer.close()

    def _on_events(self, events: list[dict], counts: dict) -> None:
        if not events and self.stage is not None:
            self.stage.update()  # the elapsed time moves on while workers start or dev is evaluated
        for e in events:
            if e["kind"] == "step":
                self._step(e)
            elif e["kind"] == "epoch":
                self._epoch(e)

    def _step(self, e: dict) -> None:
        if self.epoch != e["epoch"]:
            if self.stage is not None and self.stage.unit is None and self.epoch is not None:
                self.stage.discard()  # the wait between epochs (checkpoint, next epoch's start)
            elif self.stage is not None:
                self.stage.finish()  # e.g. how long the workers took to start
            self.epoch = e["epoch"]
            self.stage = Stage(f"epoch {e['epoch'] + 1}/{self.epochs}", total=e["batches"], unit="batches")
        self.stage.update(e["batch"], note=f"loss {e['loss']:.4f}  {e['tokens_per_s']:,.0f} tokens/s")
        if self.writer is not None:
            step = e["epoch"] * e["batches"] + e["batch"]
            self.writer.add_scalar("train/loss", e["recent_loss"], step)
            self.writer.add_scalar("train/tokens_per_s_rank0", e["tokens_per_s"], step)

    def _epoch(self, m: dict) -> None:
        if self.stage is not None:
            self.stage.finish(note=f"loss {m['train_loss']:.4f}  {m['tokens_per_s']:,.0f} tokens/s")
            self.stage = None
        if "dev_f1" in m:
            echo(f"  dev: F1 {m['dev_f1']:.4f}  precision {m['dev_precision']:.4f}  recall {m['dev_recall']:.4f}  (evaluated in {m.get('eval_time_s', 0):.0f}s)")
        if self.writer is not None:
            epoch = m["epoch"] + 1
            self.writer.add_scalar("epoch/train_loss", m["train_loss"], epoch)
            for k in ("f1", "precision", "recall"):
                if f"dev_{k}" in m:
                    self.writer.add_scalar(f"dev/{k}", m[f"dev_{k}"], epoch)
            for name, t in (m.get("dev_per_type") or {}).items():
                self.writer.add_scalar(f"dev_f1_per_type/{name}", t["f1"], epoch)
            self.writer.flush()
        if m["epoch"] + 1 < self.epochs:
            self.stage = Stage(f"epoch {m['epoch'] + 2}/{self.epochs}", unit=None)


def training_summary(cfg, summary: dict, tensorboard_dir: str | None) -> None:
    best = summary.get("best_dev_f1")
    head = f"best dev F1 {best:.4f} at epoch {summary['best_epoch'] + 1} of {len(summary['epochs'])}" if best is not None else "no dev set"
    out = cfg.output.rstrip("/")
    items = [
        ("model", f"{out}  (safetensors + tokenizer, labels.json, metrics.json)"),
        ("report", f"{out}/report.html  (curves, per-type table, confusion matrix, entity scores)"),
    ]
    calibration = summary.get("calibration")
    if calibration:
        items.append(("scores", f"temperature {calibration['temperature']:.3f} fitted on dev: entity-score ECE {calibration['ece_before']:.3f} -> {calibration['ece']:.3f}"))
    if tensorboard_dir:
        items.append(("tensorboard", f"tensorboard --logdir {tensorboard_dir}"))
    items.append(("next", f"ray-ner evaluate --model {out} --data DEV --report DIR;  ray-ner tag --model {out} --input IN --output OUT"))
    seed = f"seed {summary['seeds']['best_seed']} (the best of {len(summary['seeds']['runs'])}) " if summary.get("seeds") else ""
    print_summary(
        f"{seed}trained in {format_duration(summary['wall_time_s'])}: {head}; {summary['train_tokens_per_s']:,.0f} tokens/s",
        items,
    )


# --- tagging -----------------------------------------------------------------------------


def estimate_rows(paths: list[str], fmt: str, sample_bytes: int = 1 << 20) -> int | None:
    """Rows in the input, for the progress line's total: exact for Parquet (footers), estimated for
    JSONL from the line length of each file's first MB. None for s3://, gzip or over 200 files
    (not worth a request per file before the job starts)."""
    from pipelines.storage import is_s3

    if not paths or len(paths) > 200 or any(is_s3(p) or p.endswith(".gz") for p in paths):
        return None
    total = 0
    try:
        for path in paths:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
                continue
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                head = fh.read(sample_bytes)
            lines = head.count(b"\n")
            total += lines if len(head) >= size else round(size * lines / max(len(head), 1))
    except (OSError, ValueError):
        return None
    return total


def tagging_plan(cfg, plan, files: int, done_files: int, total_rows: int | None) -> None:
    """The plan lines of ``jobs.tag``: what the run's ``TagPlan`` says, not the settings worked out again."""
    actors = f"{plan.min_actors}" if plan.min_actors == plan.max_actors else f"{plan.min_actors}-{plan.max_actors}"
    per = f"{cfg.cpus_per_actor:g} CPU" + (f" + {cfg.gpus_per_actor:g} GPU" if cfg.gpus_per_actor else "")
    rows = f", ~{total_rows:,} rows to tag" if total_rows else ""
    done = f", {done_files} already done (resuming)" if done_files else ""
    print_plan(
        f"ray-ner tag: {cfg.model}",
        [
            ("input", f"{cfg.input} ({files} {plan.format} file{'s' if files != 1 else ''}{done}{rows}; column {plan.column})"),
            ("model", f"windows of {plan.max_length} subwords, overlap {plan.stride}, score temperature {plan.inference.temperature:g}" + (f", entities scored under {plan.min_score:g} dropped" if plan.min_score is not None else "")),
            ("resources", f"{actors} tagging actor(s) x {per}, {plan.torch_threads} thread(s) each, reading tasks {cfg.cpus_per_task:g} CPU; {cluster_line()}"),
            ("output", f"{cfg.output} ({cfg.output_format})"),
        ],
    )


class TaggingMonitor:
    """The tagging stage's progress line, fed by the actors' row counts (``TagActor(progress=board)``)."""

    def __init__(self, total_rows: int | None, show: bool = True):
        self.show = show
        self.stage = Stage("tagging", total=total_rows, unit="rows") if show else None
        self.follower = Follower(self._on_events)
        self.first_rows_at: float | None = None  # when the actors first reported rows tagged (the job's start-up ends)
        self.model_ready: dict | None = None  # the first actor's ``began_at`` / ``ready_at`` (its model load)

    @property
    def board(self):
        return self.follower.board

    def _on_events(self, events: list[dict], counts: dict) -> None:
        ready = [e["model_ready"] for e in events if "model_ready" in e]
        if ready and self.model_ready is None:
            self.model_ready = min(ready, key=lambda r: r["ready_at"])
        done = counts.get("rows", 0)
        if done and self.first_rows_at is None:
            self.first_rows_at = time.time()
        if self.stage is not None:
            total = self.stage.total
            self.stage.update(done, total=max(total, done) if total else None)

    def __enter__(self) -> "TaggingMonitor":
        self.follower.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.__exit__(*exc)
        if self.stage is not None:
            if exc[0] is None:
                self.stage.total = self.stage.done  # the estimate, replaced by what was read
            self.stage.finish(ended="done" if exc[0] is None else "stopped")


def tagging_summary(manifest: dict, output: str) -> None:
    run = manifest["this_run"]
    out = output.rstrip("/")
    rate = f"{run['words_per_s']:,.0f} words/s" if run.get("words_per_s") else "nothing new to tag"
    failed = manifest["rows_failed"]
    started = f" (first rows after {format_duration(run['startup_s'])})" if run.get("startup_s") else ""
    print_summary(
        f"tagged {manifest['rows_written']:,} rows, {failed:,} failed, of {manifest['rows_read']:,} read from {manifest['files']} file(s); "
        f"this run {format_duration(run['seconds'])}{started}, {rate}",
        [
            ("output", f"{out}  (input columns + tokens, labels, scores, entities)"),
            ("errors", f"{out}/_errors/  ({failed:,} rows with reasons)" if failed else f"{out}/_errors/  (none)"),
            ("manifest", f"{out}/_manifest.json"),
        ],
    )


# --- evaluation --------------------------------------------------------------------------


def evaluation_plan(cfg) -> None:
    print_plan(f"ray-ner evaluate: {cfg.model}", [("data", f"{cfg.data} ({cfg.scheme})"), ("resources", cluster_line())])


def evaluation_summary(metrics: dict, report_path: str | None, json_path: str | None) -> None:
    items = []
    calibration = metrics.get("calibration")
    if calibration:
        picks = ", ".join(f"{r['threshold']:.2f}: P {r['precision']:.3f} R {r['recall']:.3f}" for r in calibration["thresholds"][::2])
        items.append(("scores", f"entity-score ECE {calibration['ece']:.3f} (temperature {calibration['temperature']:.2f}); --min-score {picks}"))
    if report_path:
        items.append(("report", report_path))
    if json_path:
        items.append(("metrics", json_path))
    print_summary(
        f"F1 {metrics['f1']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}  "
        f"over {metrics['support']:,} entities in {metrics['num_sentences']:,} sentences",
        items,
    )


# --- serving -----------------------------------------------------------------------------


def serving_plan(cfg, model) -> None:
    """The plan lines of ``ray-ner serve``: where it answers, which model, how many replicas of what."""
    lo, hi = cfg.replica_range()
    replicas = f"{lo}" if lo == hi else f"{lo}-{hi} (autoscaling)"
    per = f"{cfg.cpus_per_replica:g} CPU" + (f" + {cfg.gpus_per_replica:g} GPU" if cfg.gpus_per_replica else "")
    fp32 = cfg.mixed_precision == "none" or (cfg.mixed_precision == "auto" and not cfg.gpus_per_replica)
    print_plan(
        f"ray-ner serve: {cfg.model}",
        [
            ("url", f"http://{cfg.host}:{cfg.port}  (POST /v1/tag; GET /healthz, /v1/model, /v1/stats)"),
            ("model", f"{model.model_type}, {len(model.labels)} labels, files {model.identity}; {'fp32' if fp32 else cfg.mixed_precision}, runtime {cfg.runtime}"),
            ("replicas", f"{replicas} x {per}, {cfg.threads} model thread(s) each; {cluster_line()}"),
            ("batching", f"up to {cfg.max_batch_size} documents per model call, waiting up to {cfg.batch_wait_ms:g} ms for them"),
            ("limits", f"{cfg.max_docs} documents per request, {cfg.max_chars:,} characters per document; min_score {'none' if cfg.min_score is None else f'{cfg.min_score:g}'} unless a request sets it"),
        ],
    )


class ServingMonitor:
    """The status line of ``ray-ner serve``: requests/s and latency over the last 10 s, from every replica."""

    def __init__(self):
        from pipelines.serving.stats import Window

        self.window = Window(seconds=10.0)
        self.stage: Stage | None = None
        self.follower = Follower(self._on_events, every_s=1.0)

    @property
    def board(self):
        return self.follower.board

    def show(self) -> None:
        """Start drawing (once the replicas are up)."""
        self.window.started = time.monotonic()
        self.stage = Stage("serving", unit=None)
        self.stage.update(note=self.window.line())

    def _on_events(self, events: list[dict], counts: dict) -> None:
        for e in events:
            if e.get("kind") == "serve":
                self.window.add(e)
        if self.stage is not None:
            self.stage.update(note=self.window.line())

    def __enter__(self) -> "ServingMonitor":
        self.follower.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.__exit__(*exc)
        if self.stage is not None:
            self.stage.finish(ended="stopped")
