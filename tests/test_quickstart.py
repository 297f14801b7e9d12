"""The README's quickstart runs as written: each ``ray-ner`` line of its fenced block,
in order, in a fresh folder holding the sample data ``bash scripts/demo.sh`` writes.

The only change to the commands: the tiny test models replace the packaged MiniLM
(flags appended to ``ray-ner train``, where later flags win), and the data is the demo's
generator at a smaller size. The jobs join a Ray head started in that folder, as a
newcomer's local Ray is, so the README's relative paths mean what they mean there (the
session's shared head runs its workers elsewhere). A README whose commands, flags or paths
drift from the code fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil

from jobs.demo import DemoConfig
from conftest import _free_port
from ner_core.sample_data import make_sentences, make_texts, write_conll

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[list[str]]:
    """The ``ray-ner`` lines of the first ```bash block under the README's "Quickstart" heading, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quickstart\b.*?^```bash\n(.*?)^```", readme, flags=re.S | re.M)
    assert section, "README.md has no '## Quickstart' section with a ```bash block"
    lines = section.group(1).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines]
    return [argv for argv in commands if argv and argv[0] == "ray-ner"]


def write_demo_data(root: Path) -> Path:
    """What ``jobs.demo`` writes under ``<output>/data`` (same generator and seeds), smaller."""
    data = root / DemoConfig().output / "data"
    (data / "corpus").mkdir(parents=True)
    write_conll(data / "train.txt", make_sentences(64, seed=1))
    write_conll(data / "dev.txt", make_sentences(16, seed=2))
    with open(data / "corpus" / "docs.jsonl", "w") as fh:
        for i, text in enumerate(make_texts(30, seed=3)):
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
    return data


@contextmanager
def local_ray_head(cwd: Path):
    """``ray start --head`` in ``cwd`` (free ports, its own temp dir); yields its address, stops only its processes."""
    bin_dir = os.path.dirname(sys.executable)
    temp_dir = os.path.join(tempfile.gettempdir(), f"rq-{uuid.uuid4().hex[:6]}")  # short: socket paths
    port = _free_port()
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [
            os.path.join(bin_dir, "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        ],
        cwd=cwd, env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(temp_dir in part for part in proc.info["cmdline"] or []):
                    procs.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in procs:
            proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_quickstart_block_is_train_evaluate_tag():
    assert [argv[1] for argv in quickstart_commands()] == ["train", "evaluate", "tag"]


def test_readme_quickstart_runs_as_written(tiny_dirs, tmp_path):
    write_demo_data(tmp_path)
    test_models = {"train": ["--encoder", tiny_dirs["distilbert"], "--decoder", tiny_dirs["bert"], "--max-length", "32"]}
    with local_ray_head(tmp_path) as address:
        env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for argv in quickstart_commands():
            cmd = [sys.executable, "-m", "jobs", *argv[1:], *test_models.get(argv[1], [])]
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"

    # what the quickstart says each command leaves behind
    flags = {argv[1]: dict(zip(argv[2::2], argv[3::2])) for argv in quickstart_commands()}
    model = tmp_path / flags["train"]["--output"]
    assert (model / "config.json").exists() and (model / "report.html").exists()
    assert (tmp_path / flags["evaluate"]["--report"] / "report.html").exists()
    manifest = json.loads((tmp_path / flags["tag"]["--output"] / "_manifest.json").read_text())
    assert (manifest["rows_read"], manifest["rows_written"], manifest["rows_failed"]) == (30, 30, 0)
