"""ray-ner tune and ray-ner train --seeds on the local Ray cluster: tiny encoder, tiny data, a few steps per trial.

A search of 3 trials, 2 at a time, is stopped (Ctrl-C) once a trial has ended
and resumed with --resume: the ended trials are kept as they were,
and the search ends with trials.csv, report.html and the best trial's model,
which jobs.tag then uses.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from jobs import tag as tag_job
from jobs import train as train_job
from jobs import tune as tune_job
from jobs.cli import ConfigError, run_main
from ner_core.sample_data import make_sentences, make_texts, write_conll

pytestmark = pytest.mark.slow  # each trial is a real Ray Train run

SEARCH = {"lr": {"loguniform": ["1e-4", "3e-3"]}, "seed": {"choice": [1, 2, 3]}}


@pytest.fixture(scope="module")
def train_yaml(tiny_dirs, tmp_path_factory):
    """A training config as a user writes one: 40 sentences, 5 steps an epoch, stopped at 6 steps (2 epochs)."""
    root = tmp_path_factory.mktemp("tune_data")
    write_conll(root / "train.txt", make_sentences(40, seed=11))
    write_conll(root / "dev.txt", make_sentences(10, seed=12))
    settings = {
        "train": str(root / "train.txt"), "dev": str(root / "dev.txt"),
        "arch": "encoder", "encoder": tiny_dirs["bert"], "batch_size": 8, "max_length": 32, "lr": 1e-3,
        "max_steps": 6, "num_workers": 1, "cpus_per_worker": 0.5, "log_every": 0,
    }  # fmt: skip
    (root / "train.yaml").write_text(yaml.safe_dump(settings))
    (root / "search.yaml").write_text(yaml.safe_dump(SEARCH))
    return root


def _tune_argv(data, output, *extra):
    return ["--config", str(data / "train.yaml"), "--search", str(data / "search.yaml"), "--trials", "3", "--concurrent", "2", "--output", str(output), *extra]


def _ended_trials(output) -> dict[str, float]:
    """Trials Tune has ended (finished, or stopped by ASHA), and when their folder's files were last written."""
    trials = output / "_tune" / "trials"
    ended = [p for p in trials.glob("*") if (p / "_ended").exists()] if trials.exists() else []
    return {p.name: max(f.stat().st_mtime for f in p.iterdir() if f.is_file()) for p in ended}


@pytest.fixture(scope="module")
def searched(ray_cluster, ray_head, train_yaml, tmp_path_factory):
    """``ray-ner tune`` in its own process, stopped with Ctrl-C once a trial has ended, then resumed here."""
    output = tmp_path_factory.mktemp("tune_out") / "search"
    env = {**os.environ, "RAY_ADDRESS": ray_head["address"], "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    log = output.parent / "first_run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "tune", *_tune_argv(train_yaml, output)], env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not _ended_trials(output) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    first = _ended_trials(output)
    first_run = log.read_text()
    assert code == 130, first_run  # stopped, and told so
    assert "run the same command with --resume" in first_run and not (output / "trials.csv").exists()
    assert tune_job.main(_tune_argv(train_yaml, output, "--resume")) == 0
    return {"output": output, "first": first, "first_run": first_run}


def test_search_writes_trials_csv_a_report_and_the_best_model_that_jobs_tag_uses(searched, tmp_path):
    output = searched["output"]
    with open(output / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and len({r["trial"] for r in rows}) == 3
    assert list(rows[0]) == ["trial", "lr", "seed", "best_dev_f1", "epochs", "status", "error"]
    for r in rows:
        assert 1e-4 <= float(r["lr"]) <= 3e-3 and r["seed"] in ("1", "2", "3")
        assert r["status"] in ("finished", "stopped") and 1 <= int(r["epochs"]) <= 2 and 0.0 <= float(r["best_dev_f1"]) <= 1.0
    finished = [r for r in rows if r["status"] == "finished"]
    best = max(finished, key=lambda r: float(r["best_dev_f1"]))
    # the output is the best finished trial's model, as jobs.train writes one
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["best_dev_f1"] == pytest.approx(float(best["best_dev_f1"]), abs=1e-6)
    assert metrics["config"]["lr"] == pytest.approx(float(best["lr"])) and metrics["config"]["seed"] == int(best["seed"])
    assert (output / "model.safetensors").exists() and (output / "inference.json").exists() and (output / "train_report.html").exists()
    page = (output / "report.html").read_text()
    assert page.count("<polyline") + page.count("<circle") >= len(rows) and all(f'data-trial="{r["trial"]}"' in page for r in rows)

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(12, seed=5)))
    out = tmp_path / "tagged"
    assert tag_job.main(["--model", str(output), "--input", str(src), "--output", str(out), "--actors", "1", "--cpus-per-actor", "0.5"]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_written"] == 12


def test_resumed_search_keeps_the_trials_that_had_ended(searched):
    first, output = searched["first"], searched["output"]
    assert 1 <= len(first) < 3
    after = _ended_trials(output)
    assert len(after) == 3 and {t: after[t] for t in first} == first  # not trained again: nothing of theirs rewritten
    with open(output / "trials.csv") as fh:
        rows = {r["trial"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(after)


def test_first_run_prints_a_plan_and_one_line_per_trial(searched):
    lines = searched["first_run"].splitlines()
    assert any(line.startswith("ray-ner tune: 3 trials of ray-ner train") for line in lines)
    ended = [line for line in lines if line.lstrip().startswith("trial ")]
    assert len(ended) >= 1 and all("best dev F1" in line and "lr " in line and "seed " in line for line in ended)
    assert not any("Configuration for experiment" in line or "View detailed results" in line for line in lines)  # Tune's own box


@pytest.mark.parametrize(
    "search,message",
    [
        ("lr: {loguniform: [0, 1e-3]}\n", r"search.yaml: lr: loguniform needs low > 0, got 0"),
        ("batch_size: {uniform: [8, 32]}\n", r"search.yaml: batch_size: uniform gives fractional values"),
        ("head: {choice: [linear, tree]}\n", r"search.yaml: head: head must be one of \('linear', 'crf'\), got 'tree'"),
        ("learning_rate: {choice: [1e-3]}\n", r"search.yaml: learning_rate: not a training setting"),
    ],
)
def test_bad_search_space_is_one_line_naming_the_key(train_yaml, tmp_path, search, message):
    (tmp_path / "search.yaml").write_text(search)
    argv = ["--config", str(train_yaml / "train.yaml"), "--search", str(tmp_path / "search.yaml"), "--output", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match=message) as err:
        tune_job.main(argv)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_train_with_seeds_reports_the_spread_of_dev_f1_and_keeps_the_best_seed(ray_cluster, train_yaml, tmp_path, capsys, monkeypatch):
    # data paths relative to where the command runs, as in the shipped configs
    monkeypatch.chdir(train_yaml)
    output = tmp_path / "model"
    argv = ["--config", "train.yaml", "--train", "train.txt", "--dev", "dev.txt", "--output", str(output), "--seed", "5", "--seeds", "2"]
    assert train_job.main(argv) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    seeds = metrics["seeds"]
    runs = {r["seed"]: r["best_dev_f1"] for r in seeds["runs"]}
    assert set(runs) == {5, 6}
    f1 = seeds["dev_f1"]
    assert f1["n"] == 2 and f1["min"] == min(runs.values()) and f1["max"] == max(runs.values())
    assert f1["mean"] == pytest.approx(sum(runs.values()) / 2) and f1["std"] == pytest.approx(abs(runs[5] - runs[6]) / 2)
    # the saved model is the best seed's
    assert seeds["best_seed"] == max(runs, key=runs.get) and metrics["config"]["seed"] == seeds["best_seed"]
    assert metrics["best_dev_f1"] == f1["max"] and (output / "model.safetensors").exists()
    out = capsys.readouterr().out
    assert "dev F1 over 2 seeds: mean" in out
    assert "seed 5  epoch 1  dev F1 " in out and "seed 6  epoch 2  dev F1 " in out  # progress while the seeds run
    assert f"seed {seeds['best_seed']} (the best of 2) trained in" in out  # the summary's time is that run's


def test_seeds_with_a_missing_training_file_stop_with_one_line_before_any_trial(ray_cluster, train_yaml, tmp_path, capsys):
    argv = ["--config", str(train_yaml / "train.yaml"), "--train", str(tmp_path / "nowhere.txt"), "--output", str(tmp_path / "model"), "--seeds", "2"]
    with pytest.raises(SystemExit) as exit_:
        run_main(train_job.main, argv)
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert f"no input files at {tmp_path / 'nowhere.txt'}" in err and "Traceback" not in err
    assert not (tmp_path / "model" / "_seeds").exists()
