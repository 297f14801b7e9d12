"""Ray Tune over the training job: ``ray-ner tune`` and ``ray-ner train --seeds K``.

Each trial's function (``_trial``) is the training job itself: it takes the
trial's settings into a ``TrainConfig`` and calls ``pipelines.training.driver.run_training``,
which builds the ``TorchTrainer`` and calls ``fit()``; Tune's
``TuneReportCallback`` hands the workers' per-epoch reports (dev F1 among them) on
to Tune, where ASHA stops the weak trials. No second training loop.

Layout, under ``--storage`` or else ``<output>/_tune``:

- ``search/``: Tune's experiment (what ``--resume`` restores with ``Tuner.restore``)
- ``trials/<trial id>/``: each trial's output as ``jobs.train`` writes one, its Ray
  Train run under ``_ray/`` (a trial cut off by a kill resumes from its own checkpoint)

At the end the best finished trial's files are copied into ``<output>``, beside
``trials.csv`` and the search's ``report.html``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ner_core.report import search_report
from ner_core.search_space import Param, describe, load_search, spread
from pipelines.console.terminal import echo, format_duration, print_plan, print_summary
from pipelines.labelled_data import labelled_files
from pipelines.options import IO, RESOURCES, TRAINING, option
from pipelines.storage import fsspec_filesystem, is_s3, join_path, path_exists, strip_scheme
from pipelines.training.config import TrainConfig
from pipelines.training.driver import _run_exists, _storage_args, resolve_models, run_training

EXPERIMENT = "search"
ENDED = "_ended"  # in a trial's output once Tune has ended it (not when Ctrl-C stopped it)
METRIC = "dev_f1"
TIME_ATTR = "epochs_done"
# ASHA stops a trial once it reaches max_t: far above any run's epochs, so every trial
# that ASHA keeps ends by itself and writes its model.
ASHA_MAX_T = 10_000
# A trial's driver only waits on its Ray Train workers, which reserve their own CPUs.
TRIAL_CPUS = 0.01
# The searched settings of a trial go into trials.csv and the console; Tune's own keys do not.
SCALARS = (int, float, str, bool)


@dataclass
class SearchConfig(TrainConfig):
    """``ray-ner tune``: every training setting (``--config TRAIN.yaml`` and flags, the base of
    every trial), and the search's own."""

    output: str = field(default="outputs/tune", metadata=option("output directory, local or s3://: trials.csv, report.html and the best trial's model, as jobs.train writes one", group=IO, essential=True))
    storage: str | None = field(default=None, metadata=option("the search's Tune experiment and every trial's output and Ray Train run: s3://... or a folder every node mounts (default: <output>/_tune)", group=IO))
    resume: bool = field(default=False, metadata=option("continue the interrupted search in --output (or --storage): finished trials are kept, unfinished ones continue", group=IO, essential=True))
    seeds: int = field(default=1, metadata={"cli": False})  # jobs.train's; a search varies seed itself
    search: str | None = field(default=None, metadata=option("SEARCH.yaml: training settings to search, each a constant or {loguniform|uniform|randint|choice: ...}", group=IO, essential=True))
    trials: int = field(default=4, metadata=option("trials to sample from the search space", group=TRAINING, essential=True))
    concurrent: int | None = field(default=None, metadata=option("at most this many trials at once (default: as many as the cluster's resources allow)", group=RESOURCES, essential=True))
    trial_cpus: float = field(default=TRIAL_CPUS, metadata=option("CPUs reserved by each trial's driver (it only waits on its Ray Train workers, which reserve their own)", group=RESOURCES))
    grace_epochs: int = field(default=1, metadata=option("ASHA: epochs every trial runs before it may be stopped", group=TRAINING))
    reduction_factor: int = field(default=2, metadata=option("ASHA: at each rung, keep the best 1/N of the trials", group=TRAINING))

    def __post_init__(self):
        super().__post_init__()
        for name in ("trials", "concurrent", "grace_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.trial_cpus <= 0:
            raise ValueError("trial_cpus must be > 0 (fractional: a trial's driver takes no whole core)")
        if self.seeds != 1:
            raise ValueError("--seeds is for ray-ner train; in a search, write seed: {choice: [...]} in the search space")

    def train_settings(self) -> TrainConfig:
        """The training settings every trial starts from."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


class TrialsFailed(ValueError):
    """No trial (or not every seed) finished; the message names each failed trial's reason.
    A ValueError, as the tagging job's run errors, so the command prints it as one line."""


class SearchInterrupted(Exception):
    """Ctrl-C stopped the search; Tune saved it, and ``--resume`` finishes it."""


# ----------------------------------------------------------------- layout


def search_root(output: str, storage: str | None, default: str = "_tune") -> str:
    """Where the experiment and the trials live: ``--storage``, else ``<output>/_tune``."""
    if storage:
        return storage.rstrip("/") if is_s3(storage) else os.path.abspath(storage)
    return join_path(output if is_s3(output) else os.path.abspath(output), default)


def trial_output(root: str, trial_id: str) -> str:
    return join_path(root, "trials", trial_id)


# ----------------------------------------------------------------- trial side


class _EpochReport(TuneReportCallback):
    """Tune's report callback, passing on rank 0's scalar metrics and the epochs done so far
    (ASHA's clock: a trial resumed from its Train checkpoint goes on counting from there)."""

    def after_report(self, run_context, metrics, checkpoint):
        first = {k: v for k, v in metrics[0].items() if isinstance(v, SCALARS)}
        first[TIME_ATTR] = first["epoch"] + 1
        super().after_report(run_context, [first, *metrics[1:]], None)


def _trial(config: dict, *, base: TrainConfig, root: str) -> None:
    """One trial: the training job with the trial's settings, in its own output folder."""
    output = trial_output(root, tune.get_context().get_trial_id())
    cfg = dataclasses.replace(base, **config, output=output, storage=None, resume=False)
    cfg = dataclasses.replace(cfg, resume=_run_exists(cfg.run_dir))  # a trial cut off earlier: from its last checkpoint
    run_training(cfg, callbacks=[_EpochReport()])


# ----------------------------------------------------------------- driver side


@dataclass
class TrialRow:
    """One trial as trials.csv and the console show it."""

    trial: str
    settings: dict
    best_dev_f1: float | None
    epochs: int
    status: str  # finished | stopped (by ASHA) | error
    dev_f1: list[float | None]  # per epoch, for the plot
    output: str
    error: str = ""


def _row(trial_id: str, settings: dict, history: list[dict], output: str, error: BaseException | str | None) -> TrialRow:
    f1 = [h.get(METRIC) for h in history]
    epochs = max((int(h.get(TIME_ATTR) or 0) for h in history), default=0)
    per_epoch: list[float | None] = [None] * epochs
    for h in history:
        if h.get(TIME_ATTR):
            per_epoch[int(h[TIME_ATTR]) - 1] = h.get(METRIC)
    seen = [v for v in f1 if v is not None]
    finished = path_exists(join_path(output, "metrics.json"))
    status = "error" if error else "finished" if finished else "stopped"
    message = _reason(error)[:300] if error else ""
    return TrialRow(trial_id, settings, max(seen) if seen else None, epochs, status, per_epoch, output, message)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(\(\w+\))?: ")


def _reason(error: BaseException | str) -> str:
    """``Type: message`` of what failed a trial: the original exception, not Ray's wrapper and its traceback."""
    cause = getattr(error, "cause", None)  # a RayTaskError's own exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # a traceback's text ends with the exception's line and the rest of its message
    start = max((i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)), default=len(lines) - 1)
    return " ".join(lines[start:]) if lines else "failed"


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())


def trial_line(row: TrialRow) -> str:
    f1 = f"best dev F1 {row.best_dev_f1:.4f}" if row.best_dev_f1 is not None else "no dev F1"
    tail = f": {row.error}" if row.error else ""
    return f"  trial {row.trial}  {_settings_text(row.settings)}  ->  {f1}, {row.epochs} epoch(s), {row.status}{tail}"


class _TrialLines(tune.Callback):
    """One console line per trial as it ends (restored with the experiment on ``--resume``);
    with ``epoch_lines`` (``--seeds``: trials one at a time) a line per epoch as well."""

    def __init__(self, root: str, names: list[str], epoch_lines: bool = False, epochs: int | None = None):
        self.root, self.names, self.epoch_lines, self.epochs = root, names, epoch_lines, epochs
        self.started = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.epoch_lines or not result.get(TIME_ATTR):
            return
        f1 = result.get(METRIC)
        scores = f"dev F1 {f1:.4f}" if isinstance(f1, float) else "no dev F1"
        epoch = f"epoch {result[TIME_ATTR]}" + (f"/{self.epochs}" if self.epochs else "")
        echo(f"  {_settings_text({k: trial.config.get(k) for k in self.names})}  {epoch}  {scores}  ({format_duration(time.monotonic() - self.started)} elapsed)")

    def _line(self, trial, error=None) -> None:
        settings = {k: trial.config.get(k) for k in self.names}
        result = trial.last_result or {}
        analysis = (trial.metric_analysis or {}).get(METRIC, {})
        history = [{METRIC: analysis.get("max"), TIME_ATTR: result.get(TIME_ATTR)}] if result else []
        row = _row(trial.trial_id, settings, history, trial_output(self.root, trial.trial_id), error)
        _write_text(row.output, ENDED, row.status)  # finished, stopped by ASHA or failed: not to be run again
        echo(trial_line(row))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, error=_error_text(trial) or "failed")


def _error_text(trial) -> str | None:
    """The traceback Tune wrote for a failed trial (its last line names the exception)."""
    try:
        with open(trial.error_file, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, TypeError):  # not written (yet), or no local trial folder
        return None


def _tune_space(params: dict[str, Param]) -> dict[str, Any]:
    """Tune's own distributions for the parsed search space."""
    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    space = {}
    for name, p in params.items():
        if p.kind == "constant":
            space[name] = p.args[0]
        elif p.kind == "choice":
            space[name] = tune.choice(list(p.args))
        else:
            space[name] = kinds[p.kind](*p.args)
    return space


def _run_search(base: TrainConfig, *, root: str, param_space: dict, names: list[str], num_samples: int, scheduler, concurrent: int | None, trial_cpus: float, resume: bool, epoch_lines: bool = False) -> list[TrialRow]:
    """Run (or with ``resume`` restore and finish) the Tune experiment under ``root``; every trial's row.

    Raises ``SearchInterrupted`` if the search was stopped (Ctrl-C) before every trial ended.
    """
    experiment = join_path(root, EXPERIMENT)
    if path_exists(experiment) and not resume:
        raise FileExistsError(f"{root} holds an earlier search: pass --resume to continue it, or choose another --output")
    if resume and not path_exists(experiment):
        raise FileNotFoundError(f"--resume: no earlier search in {root}")
    for data in (base.train, base.dev):
        if data:
            labelled_files(data)  # a missing file is one line here, not an error in every trial
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, root=root), {"cpu": trial_cpus})
    storage = _storage_args(root)  # S3 through the project's s3fs, as training's checkpoints
    if resume:
        tuner = tune.Tuner.restore(strip_scheme(experiment), trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=storage.get("storage_filesystem"))
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, num_samples=num_samples, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=EXPERIMENT, **storage, verbose=0, callbacks=[_TrialLines(root, names, epoch_lines, None if base.max_steps else base.epochs)]),
        )
    results = tuner.fit()
    # Tune marks the trials it stops at Ctrl-C terminated too: only the marker says a trial ended
    ended = sum(1 for r in results if r.error or path_exists(join_path(trial_output(root, r.metrics["trial_id"]), ENDED)))
    if ended < len(results):
        raise SearchInterrupted(f"search stopped with {ended} trial(s) ended; run the same command with --resume to finish it")
    rows = []
    for result in results:
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        trial_id = result.metrics["trial_id"]  # Tune sets it even for a trial that never reported
        rows.append(_row(trial_id, {k: (result.config or {}).get(k) for k in names}, history, trial_output(root, trial_id), result.error))
    return rows


def _best(rows: list[TrialRow]) -> TrialRow:
    finished = [r for r in rows if r.status == "finished" and r.best_dev_f1 is not None]
    if not finished:
        errors = "; ".join(f"{r.trial}: {r.error}" for r in rows if r.error)[:500]
        raise TrialsFailed(f"no trial finished with a model{': ' + errors if errors else ''}")
    return max(finished, key=lambda r: r.best_dev_f1)


def _copy_model(source: str, dest: str, rename: dict[str, str] | None = None) -> None:
    """The files of a trial's output (not its ``_ray`` run or TensorBoard folders) into ``dest``."""
    rename = rename or {}
    src_fs, dst_fs = fsspec_filesystem(source), fsspec_filesystem(dest)
    src, dst = strip_scheme(source), strip_scheme(dest)
    dst_fs.makedirs(dst, exist_ok=True)
    names = [os.path.basename(i["name"].rstrip("/")) for i in src_fs.ls(src, detail=True) if i["type"] == "file"]
    names = [n for n in names if n != ENDED]
    for name in sorted(names, key=lambda n: n == "metrics.json"):  # metrics.json last: "done"
        with src_fs.open(f"{src}/{name}", "rb") as fin, dst_fs.open(f"{dst}/{rename.get(name, name)}", "wb") as fout:
            fout.write(fin.read())


def _write_text(dest_dir: str, name: str, text: str) -> None:
    fs = fsspec_filesystem(dest_dir)
    path = strip_scheme(dest_dir)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/{name}", "w") as fh:
        fh.write(text)


def _read_json(path: str) -> dict:
    with fsspec_filesystem(path).open(strip_scheme(path)) as fh:
        return json.load(fh)


def trials_csv(rows: list[TrialRow], names: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", *names, "best_dev_f1", "epochs", "status", "error"])
    for r in rows:
        f1 = "" if r.best_dev_f1 is None else f"{r.best_dev_f1:.6f}"
        writer.writerow([r.trial, *(r.settings.get(k) for k in names), f1, r.epochs, r.status, r.error])
    return out.getvalue()


def search_space(cfg: SearchConfig) -> dict[str, Param]:
    """The search's checked space (no Ray needed, so a mistake is one line before Ray starts)."""
    if not cfg.search:
        raise ValueError("no search space: set --search SEARCH.yaml")
    if not cfg.dev:
        raise ValueError("a search compares trials on dev F1: set --dev")
    params = load_search(cfg.search, TrainConfig)
    if not cfg.train:
        raise ValueError("no training data: set --train")
    return params


def run_tune(cfg: SearchConfig, params: dict[str, Param]) -> dict:
    """The whole search over ``params`` (``search_space``): plan, trials, then trials.csv,
    report.html and the best model in ``cfg.output``."""
    base = resolve_models(cfg.train_settings())
    root = search_root(cfg.output, cfg.storage)
    names = list(params)
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=ASHA_MAX_T, grace_period=cfg.grace_epochs, reduction_factor=cfg.reduction_factor)
    length = f"{base.max_steps:,} steps" if base.max_steps else f"{base.epochs} epochs"
    print_plan(
        f"ray-ner tune: {cfg.trials} trials of ray-ner train{' (resumed)' if cfg.resume else ''}",
        [
            ("search", describe(params)),
            ("trials", f"ASHA on dev F1 per epoch (grace {cfg.grace_epochs} epoch(s), keeps 1/{cfg.reduction_factor} per rung); "
                       f"{'at most ' + str(cfg.concurrent) if cfg.concurrent else 'as many as fit'} at once, each {cfg.trial_cpus:g} CPU + its workers; base: {length}, batch {base.batch_size}, lr {base.lr:g}"),
            ("output", f"{cfg.output}  (experiment and trials: {root})"),
        ],
    )  # fmt: skip
    started = time.perf_counter()
    rows = _run_search(base, root=root, param_space=_tune_space(params), names=names, num_samples=cfg.trials, scheduler=scheduler, concurrent=cfg.concurrent, trial_cpus=cfg.trial_cpus, resume=cfg.resume)
    best = _best(rows)
    _copy_model(best.output, cfg.output, rename={"report.html": "train_report.html"})
    _write_text(cfg.output, "trials.csv", trials_csv(rows, names))
    summary = {"best_trial": best.trial, "best_dev_f1": best.best_dev_f1, "best_settings": best.settings, "trials": [dataclasses.asdict(r) for r in rows], "wall_time_s": time.perf_counter() - started}
    _write_text(cfg.output, "report.html", search_report(summary, search=describe(params), output=cfg.output))
    out = cfg.output.rstrip("/")
    print_summary(
        f"searched {len(rows)} trials in {format_duration(summary['wall_time_s'])}: best trial {best.trial}, dev F1 {best.best_dev_f1:.4f} ({_settings_text(best.settings)})",
        [
            ("model", f"{out}  (the best trial's, as ray-ner train writes one; its training report: train_report.html)"),
            ("trials", f"{out}/trials.csv  ({', '.join(f'{sum(r.status == s for r in rows)} {s}' for s in ('finished', 'stopped', 'error'))})"),
            ("report", f"{out}/report.html  (dev F1 per trial and epoch)"),
            ("next", f"ray-ner tag --model {out} --input IN --output OUT"),
        ],
    )
    return summary


def run_seeds(cfg: TrainConfig) -> dict:
    """``ray-ner train --seeds K``: the same run with seeds seed..seed+K-1 as Tune trials (a grid,
    no early stopping, one after another: each gets the resources one run asks for); the best seed's model goes to ``cfg.output`` and its metrics.json
    gains ``seeds``: the mean, std, min and max of the best dev F1 of every seed."""
    if not cfg.dev:
        raise ValueError("--seeds compares runs on dev F1: set --dev")
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    root = search_root(cfg.output, None, default="_seeds")
    base = dataclasses.replace(cfg, seeds=1)
    rows = _run_search(base, root=root, param_space={"seed": tune.grid_search(seeds)}, names=["seed"], num_samples=1, scheduler=None, concurrent=1, trial_cpus=TRIAL_CPUS, resume=cfg.resume, epoch_lines=True)
    best = _best(rows)
    failed = [r for r in rows if r.status != "finished"]
    if failed:
        raise TrialsFailed(f"{len(failed)} of {len(rows)} seeds did not finish: " + "; ".join(f"seed {r.settings['seed']}: {r.error or r.status}" for r in failed))
    _copy_model(best.output, cfg.output)
    summary = _read_json(join_path(best.output, "metrics.json"))
    summary["seeds"] = {
        "dev_f1": spread([r.best_dev_f1 for r in rows]),
        "runs": [{"seed": r.settings["seed"], "best_dev_f1": r.best_dev_f1, "epochs": r.epochs, "output": r.output} for r in rows],
        "best_seed": best.settings["seed"],
    }
    summary["config"]["seeds"] = cfg.seeds
    summary["config"]["output"] = cfg.output
    _write_text(cfg.output, "metrics.json", json.dumps(summary, indent=1))
    return summary


def seeds_summary(summary: dict) -> None:
    """The ``--seeds`` line: the spread of dev F1 across the seeds, before the usual summary."""
    s = summary["seeds"]["dev_f1"]
    runs = ", ".join(f"seed {r['seed']} {r['best_dev_f1']:.4f}" for r in summary["seeds"]["runs"])
    echo(f"dev F1 over {s['n']} seeds: mean {s['mean']:.4f}  std {s['std']:.4f}  min {s['min']:.4f}  max {s['max']:.4f}  ({runs}; model: seed {summary['seeds']['best_seed']})")
