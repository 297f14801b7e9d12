"""The jobs run unchanged under Ray Jobs: submitted to a real head through the job server.

This is the path a user takes with ``ray job submit --working-dir . -- python -m jobs.train ...``:
the project is shipped as the job's working directory, the entrypoint finds
the cluster through ``RAY_ADDRESS`` (set by the job supervisor) and the data
lives on S3 (here the loopback S3 server).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ner_core.sample_data import make_sentences, make_texts, to_conll

pytestmark = pytest.mark.slow  # jobs submitted through Ray Jobs

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", "runs", "outputs", "bench_out", "**/__pycache__", ".pytest_cache"]


@pytest.fixture(scope="module")
def client(ray_head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head["dashboard"])


def _run_job(client, entrypoint: str, timeout_s: float = 600, env_vars: dict | None = None) -> str:
    from ray.job_submission import JobStatus

    if env_vars is None:
        env_vars = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runtime_env = {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env_vars}
    deadline = time.time() + timeout_s
    while True:  # a freshly started head's job agent takes a few seconds to come up
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, f"job {job_id} still {status} after {timeout_s}s"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    return logs


def test_train_then_tag_through_the_job_server(client, ray_cluster, tiny_dirs, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    bucket = s3_bucket[len("s3://") :]
    fs.pipe(f"{bucket}/data/train.txt", to_conll(make_sentences(120, seed=11)).encode())
    fs.pipe(f"{bucket}/data/dev.txt", to_conll(make_sentences(20, seed=12)).encode())
    fs.pipe(f"{bucket}/corpus/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in make_texts(30, seed=13)).encode())
    model = tmp_path / "model"

    logs = _run_job(
        client,
        f"python -m jobs.train --train {s3_bucket}/data/train.txt --dev {s3_bucket}/data/dev.txt --output {model} "
        f"--arch encoder --encoder {tiny_dirs['bert']} --epochs 1 --batch-size 8 --max-length 32 "
        "--num-workers 2 --cpus-per-worker 0.5",
    )
    metrics = json.loads((model / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and (model / "model.safetensors").exists()
    assert "best dev F1" in logs

    logs = _run_job(
        client,
        f"python -m jobs.tag --model {model} --input {s3_bucket}/corpus --output {s3_bucket}/tagged "
        "--actors 1 --cpus-per-actor 0.5 --max-length 32",
    )
    manifest = json.loads(fs.cat(f"{bucket}/tagged/_manifest.json"))
    assert manifest["rows_read"] == manifest["rows_written"] == 30
    assert "tagged 30 rows" in logs


# What a task of a submitted job reports: the env vars of its runtime environment.
_SHOW_WORKER_ENV = (
    "import json, ray; from pipelines.ray_env import init_ray; init_ray(); "
    "env = ray.get(ray.remote(num_cpus=0.1)(lambda: dict(ray.get_runtime_context().runtime_env.get('env_vars') or {})).remote()); "
    "print('worker env:', json.dumps(env))"
)


def test_submitted_jobs_give_workers_the_local_environment_but_no_credentials(client, ray_cluster):
    # The user sets nothing at submission; the driver (on the head) has HF_HUB_OFFLINE,
    # the S3 endpoint and S3 credentials in its environment, as a cluster node would.
    logs = _run_job(client, f'python -c "{_SHOW_WORKER_ENV}"', env_vars={})
    env = json.loads(next(line for line in logs.splitlines() if line.startswith("worker env: "))[len("worker env: ") :])
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["HF_HUB_OFFLINE"] == "1"
    assert env["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]
    assert not [k for k in env if "SECRET" in k or "ACCESS_KEY" in k or k.endswith("_TOKEN")]


def test_settings_made_at_submission_are_left_to_the_user():
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from pipelines.ray_env import worker_env_vars

    job = {"runtime_env": {"working_dir": ".", "env_vars": {"TOKENIZERS_PARALLELISM": "true"}}}
    environ = {
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job), "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1",
        "AWS_ENDPOINT_URL": "http://s3.local", "AWS_ACCESS_KEY_ID": "AKIA...", "AWS_SECRET_ACCESS_KEY": "secret",
    }  # fmt: skip
    env_vars = worker_env_vars(environ)
    assert env_vars == {"HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": "http://s3.local"}
    # Ray accepts it next to the job's runtime env (it refuses a driver env var the job also sets)
    assert _merge_runtime_env(job["runtime_env"], {"env_vars": env_vars})["env_vars"]["TOKENIZERS_PARALLELISM"] == "true"
    assert worker_env_vars({})["TOKENIZERS_PARALLELISM"] == "false"
