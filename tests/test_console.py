"""What a job prints: a plan, one progress line per stage, a summary whose numbers are the
output's own, and none of Ray's internals (executor dumps, forwarded worker output).

The jobs run as real subprocesses of the installed ``ray-ner`` command against the
session's Ray head, exactly as a user runs them, with stdout a pipe (a log, not a terminal).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from ner_core.sample_data import make_sentences, make_texts, write_conll
from pipelines.console.terminal import Stage, format_duration, format_rate

# What the console must never show by default: Ray Data's executor state, Ray's INFO
# logs, output forwarded from Ray workers and actors, and progress bars (tqdm's).
RAY_INTERNALS = (
    "logging_progress",
    "Tasks: 0 [backpressured",
    "streaming_executor.py",
    "Starting execution of Dataset",
    "(RayTrainWorker",
    "(TrainController",
    "(MapWorker",
    "pid=",
    "Token authentication is enabled",
    "it/s]",
)


def _ray_ner() -> str:
    """The console command pip installed beside this interpreter."""
    path = os.path.join(os.path.dirname(sys.executable), "ray-ner")
    assert os.path.exists(path), "ray-ner is not installed: pip install -e . ([project.scripts])"
    return path


def _run(ray_cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.run([_ray_ner(), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _assert_clean(proc: subprocess.CompletedProcess) -> None:
    both = proc.stdout + proc.stderr
    for marker in RAY_INTERNALS:
        assert marker not in both, f"{marker!r} on the console:\n{both}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, f"printed twice: {repeated}"


def test_progress_line_in_a_log_is_periodic_and_ends_with_the_final_state():
    out = io.StringIO()  # not a terminal: whole lines, never carriage returns
    stage = Stage("tagging", total=100, unit="rows", stream=out, log_every_s=0)
    stage.started -= 10  # a stage 10 s in: long enough for a rate and an ETA
    stage.update(40)
    stage.update(40)  # nothing moved: no second identical line
    stage.update(add=60)
    stage.finish()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("tagging: 40/100 rows") and "ETA" in lines[0]
    assert lines[1].startswith("tagging: 100/100 rows") and "ETA 0:00" in lines[1]
    assert lines[2].startswith("tagging: 100/100 rows") and "done in" in lines[2]
    assert len(lines) == 3 and "\r" not in out.getvalue()
    stage.update(200)  # after finish: ignored
    assert len(out.getvalue().splitlines()) == 3
    waiting = Stage("epoch 2/2", unit=None, stream=out, log_every_s=0)
    waiting.discard()  # a placeholder the next line replaces: never printed
    assert len(out.getvalue().splitlines()) == 3
    assert [format_duration(s) for s in (5, 75, 3725)] == ["0:05", "1:15", "1:02:05"]


def test_a_rate_is_shown_only_once_it_means_something():
    # a stage that hears of 5 batches at once, a millisecond in, is not doing 5,000 a second
    assert format_rate(5, 0.001, "batches") is None
    assert format_rate(0, 30, "batches") is None
    assert format_rate(5, 2.0, "batches") == "2.5 batches/s"
    assert format_rate(20_000, 2.0, "rows") == "10,000 rows/s"
    out = io.StringIO()
    stage = Stage("epoch 1/3", total=5, unit="batches", stream=out, log_every_s=0)
    stage.update(5)
    stage.finish()
    assert "/s" not in out.getvalue() and "ETA" not in out.getvalue()


@pytest.mark.slow
def test_tag_job_prints_plan_progress_and_the_manifest_numbers(ray_cluster, tiny_tagger, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus / "docs.jsonl", "w") as fh:
        for i, text in enumerate(make_texts(30, seed=5)):
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
        fh.write("{not json\n")  # one bad row: the summary must count it and say where it went
    out = tmp_path / "tagged"
    proc = _run(
        ray_cluster, "tag", "--model", tiny_tagger, "--input", str(corpus), "--output", str(out),
        "--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--max-length", "24", "--stride", "6",
    )  # fmt: skip
    _assert_clean(proc)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["rows_read"], manifest["rows_written"], manifest["rows_failed"]) == (31, 30, 1)
    stdout = proc.stdout
    # the plan: model, input, resources, output
    assert stdout.startswith(f"ray-ner tag: {tiny_tagger}\n")
    assert re.search(r"input +.*\(1 jsonl file, ~31 rows to tag; column text\)", stdout)
    assert re.search(r"resources +1 tagging actor\(s\) x 0.5 CPU", stdout)
    # one progress stage, ending at every row read
    assert re.search(r"^tagging: 31/31 rows .*done in", stdout, re.M)
    # the summary's numbers are the manifest's, and it says where output and errors are
    summary = stdout[stdout.index("tagged 30 rows") :]
    assert f"tagged {manifest['rows_written']} rows, {manifest['rows_failed']} failed, of {manifest['rows_read']} read from 1 file(s)" in summary
    assert re.search(rf"^  output +{re.escape(str(out))}  ", summary, re.M)
    assert re.search(rf"^  errors +{re.escape(str(out))}/_errors/  \(1 rows with reasons\)", summary, re.M)
    assert re.search(rf"^  manifest +{re.escape(str(out))}/_manifest.json", summary, re.M)


@pytest.mark.slow
def test_a_mistake_in_the_training_data_is_one_line_without_ray_advice(ray_cluster, tiny_dirs, tmp_path):
    (tmp_path / "train.txt").write_text("EU B-ORG\nrejects O\ncall I-PER\n")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    argv = [
        "train", "--train", str(tmp_path / "train.txt"), "--output", str(tmp_path / "out"),
        "--encoder", tiny_dirs["distilbert"], "--decoder", tiny_dirs["bert"], "--num-workers", "1",
    ]  # fmt: skip
    proc = subprocess.run([_ray_ner(), *argv], env=env, capture_output=True, text=True, timeout=300)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.txt:3: invalid IOB2 sequence: I-PER" in lines[0], both[-3000:]
    for advice in ("Failed to apply UDF transform", "To change retry attempts", "DataContext", "Traceback"):
        assert advice not in both, both[-3000:]
    _assert_clean(proc)


@pytest.mark.slow
def test_evaluate_command_writes_a_report_of_its_own_numbers(ray_cluster, tiny_tagger, tmp_path):
    write_conll(tmp_path / "dev.txt", make_sentences(12, seed=4))
    proc = _run(
        ray_cluster, "evaluate", "--model", tiny_tagger, "--data", str(tmp_path / "dev.txt"),
        "--json", str(tmp_path / "m.json"), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    _assert_clean(proc)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert f"F1 {metrics['f1']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}" in proc.stdout
    page = (tmp_path / "report" / "report.html").read_text()
    assert re.search(rf"^  report +{re.escape(str(tmp_path / 'report' / 'report.html'))}$", proc.stdout, re.M)
    for name, m in metrics["per_type"].items():
        row = re.search(rf'<tr data-type="{name}">(.*?)</tr>', page).group(1)
        cells = re.findall(r"<td>(?:<span[^>]*></span>)?([^<]*)</td>", row)
        assert cells == [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", f"{m['support']:,}"]
    labels, matrix = metrics["confusion"]["labels"], metrics["confusion"]["matrix"]
    for i, gold in enumerate(labels):
        for j, pred in enumerate(labels):
            if (i, j) != (len(labels) - 1, len(labels) - 1):
                assert f'data-gold="{gold}" data-pred="{pred}"' in page
                cell = re.search(rf'<td data-gold="{re.escape(gold)}" data-pred="{re.escape(pred)}"[^>]*>([\d,]+)</td>', page).group(1)
                assert int(cell.replace(",", "")) == matrix[i][j]


def test_unknown_job_lists_the_jobs():
    proc = subprocess.run([_ray_ner(), "fly"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown job 'fly'" in proc.stderr
    assert all(name in proc.stderr for name in ("train", "tag", "evaluate", "demo"))


def test_a_job_has_the_same_flags_as_its_module():
    job = "tag"  # every job goes through the same dispatch; one is enough (each run imports Ray and torch)
    command = subprocess.run([_ray_ner(), job, "--help"], capture_output=True, text=True, timeout=60)
    module = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], capture_output=True, text=True, timeout=60)
    flags = lambda text: sorted(set(re.findall(r"--[a-z][a-z0-9-]+", text)))  # noqa: E731
    assert command.returncode == 0 and flags(command.stdout) == flags(module.stdout)
    assert "--verbose" in command.stdout and command.stdout.startswith(f"usage: ray-ner {job}")
