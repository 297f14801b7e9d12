"""Training and tagging on a Ray cluster of two nodes (both on this machine).

The session's head is joined by a second node (as ``ray.cluster_utils.Cluster``
adds one) that declares a custom resource, ``worker_node``;
the jobs pin their training workers, tagging actors and tasks to it with
``--worker-resources`` / ``--actor-resources`` / ``--task-resources``, so the
files they write come from a node other than the driver's. Checkpoints and
tagged output go to the loopback S3 server. The node is stopped at the end of
the module; the other test modules see the one-node cluster they expect.

On one machine a local path is in fact readable from both nodes, so these
tests cannot show pieces scattering; they show what a real cluster needs:
work off the driver's node, state only in shared storage, resume from it,
and a one-line refusal of node-local storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from jobs import tag as tag_job
from jobs import train as train_job
from jobs.cli import run_main
from ner_core.sample_data import make_sentences, make_texts, write_conll

from conftest import TrainingWorkerKiller, _free_port

pytestmark = pytest.mark.slow  # a cluster of several Ray nodes

WORKER = "worker_node"  # the custom resource only the second node has


def _alive_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def _one_line_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: ")
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def conll_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll_small")
    write_conll(root / "train.txt", make_sentences(120, seed=1))
    write_conll(root / "dev.txt", make_sentences(20, seed=2))
    return root


def _train_argv(tiny_dirs, data, output, *extra):
    return [
        "--train", str(data / "train.txt"), "--dev", str(data / "dev.txt"), "--output", str(output),
        "--arch", "encoder-decoder", "--encoder", tiny_dirs["distilbert"], "--decoder", tiny_dirs["bert"],
        "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--log-every", "0",
        "--num-workers", "2", "--cpus-per-worker", "0.5", "--seed", "7", *extra,
    ]  # fmt: skip


def test_gpu_workers_on_a_cpu_head_refuse_local_storage_before_the_gpu_node_is_up(ray_cluster, tiny_dirs, conll_small, tmp_path, capsys):
    """An autoscaling cluster with only its head up is one node, yet workers asking for a
    resource the head lacks will run elsewhere: local storage is refused there too.
    (Runs before the second node joins: the module's tests run in file order.)"""
    assert len(_alive_nodes(ray_cluster)) == 1
    argv = _train_argv(tiny_dirs, conll_small, tmp_path / "out", "--worker-resources", "gpu_node=1")
    line = _one_line_error(train_job.main, argv, capsys)
    assert f"the run directory {tmp_path / 'out' / '_ray'} (default: under --output) is on this node's disk" in line
    assert "(they need gpu_node, which only other nodes have)" in line and "--storage s3://" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def two_nodes(ray_cluster, ray_head):
    """The session's head plus a second node (1 CPU, ``worker_node: 2``), for this module only.

    Added the way Ray's own ``ray.cluster_utils.Cluster.add_node`` adds one, in this
    process, so that stopping it stops this node only (``ray stop`` would stop the head
    too, and every other Ray on the machine). ``ray start --address`` cannot be used
    here: with conftest's loopback switch it refuses to add a node, and without it it
    turns 127.0.0.1 into the machine's outward IP, where the head does not listen.
    """
    import shutil

    from ray._private.node import Node
    from ray._private.parameter import RayParams

    before = {n["NodeID"] for n in _alive_nodes(ray_cluster)}
    temp_dir = os.path.join(tempfile.gettempdir(), f"rw-{uuid.uuid4().hex[:6]}")  # short: socket paths
    params = RayParams(
        gcs_address=ray_head["address"], node_ip_address="127.0.0.1", num_cpus=1, resources={WORKER: 2},
        temp_dir=temp_dir, object_store_memory=150 * 1024**2, include_log_monitor=False, node_manager_port=0,
        min_worker_port=0, max_worker_port=0, dashboard_agent_listen_port=_free_port(), metrics_export_port=_free_port(),
    )  # fmt: skip
    node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
    try:
        deadline = time.time() + 60
        while not (added := [n["NodeID"] for n in _alive_nodes(ray_cluster) if n["NodeID"] not in before]):
            assert time.time() < deadline, "the second Ray node did not join"
            time.sleep(0.2)
        yield {"head": next(iter(before)), "worker": added[0]}
    finally:
        node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        deadline = time.time() + 60
        while len(_alive_nodes(ray_cluster)) > 1 and time.time() < deadline:
            time.sleep(0.2)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _placements(dashboard: str, kind: str) -> dict[str, tuple[str, str]]:
    """Every actor (or task) the cluster knows, by id: (class or task name, node id), from Ray's State API."""
    from ray.util.state import list_actors, list_tasks

    if kind == "actor":
        return {a.actor_id: (a.class_name, a.node_id) for a in list_actors(address=dashboard, limit=10_000, raise_on_missing_output=False)}
    return {t.task_id: (t.name, t.node_id) for t in list_tasks(address=dashboard, limit=10_000, raise_on_missing_output=False)}


def _nodes_of(dashboard: str, kind: str, match, before: dict) -> set[str]:
    """Nodes where the actors/tasks created since ``before`` whose names ``match`` ran."""
    return {node for ident, (name, node) in _placements(dashboard, kind).items() if ident not in before and match(name) and node}


def _s3_files(uri: str) -> list[str]:
    """Every object under ``uri`` now (the listing cache of this process's s3fs dropped first)."""
    from pipelines.storage import fsspec_filesystem, strip_scheme

    fs = fsspec_filesystem(uri)
    fs.invalidate_cache()
    return fs.find(strip_scheme(uri))


def _s3_json(uri: str):
    from pipelines.storage import fsspec_filesystem, strip_scheme

    fs = fsspec_filesystem(uri)
    fs.invalidate_cache()
    return json.loads(fs.cat(strip_scheme(uri)))


def test_training_on_a_worker_node_resumes_from_checkpoints_on_s3(ray_cluster, ray_head, two_nodes, tiny_dirs, conll_small, s3_bucket):
    """Workers pinned to the non-head node, the model and (by default, beside it) the checkpoints
    on S3; a worker killed after epoch 0, then --resume trains only epoch 1. (That a resumed run
    scores what an uninterrupted one does is tests/test_train_job.py's killed-run test.)"""
    from pipelines.storage import strip_scheme

    pin = ["--worker-resources", f"{WORKER}=1"]
    actors_before = _placements(ray_head["dashboard"], "actor")
    output = f"{s3_bucket}/models/resumed"  # storage defaults to the output's own location: resumed/_ray

    def first_checkpoint_registered() -> bool:
        snapshot = f"{strip_scheme(output)}/_ray/train/checkpoint_manager_snapshot.json"
        return snapshot in _s3_files(output) and "epoch_000" in json.dumps(_s3_json(f"s3://{snapshot}"))

    # a worker process on the second node killed from outside once epoch 0's checkpoint is on S3
    with TrainingWorkerKiller(first_checkpoint_registered, ray_head["dashboard"]) as killer:
        with pytest.raises(Exception, match="worker process has died"):
            train_job.main(_train_argv(tiny_dirs, conll_small, output, *pin, "--max-failures", "0"))
    assert killer.killed
    assert [p for p in _s3_files(output) if "/_ray/train/epoch_000/" in p]
    assert train_job.main(_train_argv(tiny_dirs, conll_small, output, *pin, "--resume")) == 0

    model_files = {p[len(strip_scheme(output)) + 1 :] for p in _s3_files(output)}
    assert {"model.safetensors", "tokenizer.json", "labels.json", "metrics.json"} <= model_files
    assert [p for p in model_files if p.startswith("_ray/train/epoch_001/")]  # checkpoints on S3
    resumed = _s3_json(f"{output}/metrics.json")
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1]
    assert _nodes_of(ray_head["dashboard"], "actor", lambda n: n == "RayTrainWorker", actors_before) == {two_nodes["worker"]}


def test_local_training_storage_on_two_nodes_is_refused_in_one_line(ray_cluster, two_nodes, tiny_dirs, conll_small, tmp_path, capsys):
    line = _one_line_error(train_job.main, _train_argv(tiny_dirs, conll_small, tmp_path / "out", "--storage", str(tmp_path / "ckpt")), capsys)
    assert f"--storage {tmp_path / 'ckpt'} is on this node's disk" in line and "(the Ray cluster has 2 nodes)" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()
    # a shared mount is the user's word: the job gets past the check, to its (missing) data
    argv = _train_argv(tiny_dirs, tmp_path / "nowhere", tmp_path / "out", "--storage", str(tmp_path / "ckpt"), "--storage-shared", "true")
    assert "no input files at" in _one_line_error(train_job.main, argv, capsys)


TAG_ARGS = [
    "--actors", "1", "--cpus-per-actor", "0.5", "--max-length", "24", "--stride", "6",
    # small blocks and output files: the job stages many pieces, so the kill below lands mid-run
    "--rows-per-block", "10", "--rows-per-file", "10", "--batch-size", "10", "--read-tasks", "1", "--commit-every-s", "0.2",
    "--actor-resources", f"{WORKER}=1", "--task-resources", f"{WORKER}=0.1",
]  # fmt: skip


def _s3_rows(uri: str) -> list[dict]:
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem, fsspec_filesystem, strip_scheme

    fsspec_filesystem(uri).invalidate_cache()
    return pads.dataset(strip_scheme(uri), format="parquet", filesystem=arrow_filesystem(uri)).to_table().to_pylist()


def test_tagging_on_a_worker_node_to_s3_resumes_after_a_kill(ray_cluster, ray_head, two_nodes, tiny_tagger, s3_bucket):
    from pipelines.storage import fsspec_filesystem, strip_scheme

    fs = fsspec_filesystem(s3_bucket)
    texts = make_texts(160, seed=6)
    for part in range(4):
        rows = [json.dumps({"n": part * 40 + i, "text": t}) for i, t in enumerate(texts[part * 40 : (part + 1) * 40])]
        fs.pipe(f"{strip_scheme(s3_bucket)}/corpus/part-{part}.jsonl", ("\n".join(rows) + "\n").encode())
    args = ["--model", tiny_tagger, "--input", f"{s3_bucket}/corpus", *TAG_ARGS]

    actors_before, tasks_before = _placements(ray_head["dashboard"], "actor"), _placements(ray_head["dashboard"], "task")
    assert tag_job.main([*args, "--output", f"{s3_bucket}/whole"]) == 0
    assert _nodes_of(ray_head["dashboard"], "actor", lambda n: "TagActor" in n, actors_before) == {two_nodes["worker"]}
    assert _nodes_of(ray_head["dashboard"], "task", lambda n: "TaggingInput" in n or "Write" in n, tasks_before) == {two_nodes["worker"]}

    # SIGKILL the driver once the worker node has staged its first piece on S3: mid-run
    resumed = f"{s3_bucket}/resumed"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.tag", *args, "--output", resumed], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not [p for p in _s3_files(f"{resumed}/_staging") if ".ok." in p]:
        assert proc.poll() is None and time.time() < deadline, "the job ended before staging a piece"
        time.sleep(0.2)
    proc.kill()
    assert proc.wait(timeout=60) == -9
    done_at_kill = sum(len(_s3_json(f"s3://{p}")["files"]) for p in _s3_files(f"{resumed}/_done") if p.endswith(".json"))  # a marker per commit pass
    assert done_at_kill < 4 and not [p for p in _s3_files(resumed) if p.endswith("_manifest.json")]

    assert tag_job.main([*args, "--output", resumed]) == 0

    manifest = _s3_json(f"{resumed}/_manifest.json")
    assert manifest["rows_read"] == manifest["rows_written"] == 160 and manifest["rows_failed"] == 0
    # files finished before the kill are not redone: committed then, or at the re-run's start if
    # all their pieces were staged
    assert manifest["this_run"]["files_tagged"] <= 4 - done_at_kill
    key = lambda r: r["n"]  # noqa: E731
    assert sorted(_s3_rows(resumed), key=key) == sorted(_s3_rows(f"{s3_bucket}/whole"), key=key)
    assert not _s3_files(f"{resumed}/_staging")  # every staged piece committed or discarded


def test_local_tagging_output_on_two_nodes_is_refused_in_one_line(ray_cluster, two_nodes, tiny_tagger, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "Alice met Bob in Paris."}) + "\n")
    argv = ["--model", tiny_tagger, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    line = _one_line_error(tag_job.main, argv, capsys)
    assert f"--output {tmp_path / 'out'} is on this node's disk" in line and "(the Ray cluster has 2 nodes)" in line
    assert "--output-shared true" in line and not (tmp_path / "out").exists()
    # declared a shared mount: past the check, to the next one (the model)
    argv = ["--model", str(tmp_path / "no-model"), *argv[2:], "--output-shared", "true"]
    assert "cannot load model" in _one_line_error(tag_job.main, argv, capsys)
