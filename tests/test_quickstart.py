"""The README's quickstart runs as written: each ``ray-ner`` line of its fenced block,
in order, in a fresh folder holding the sample data ``bash scripts/demo.sh`` writes.

The only change to the commands: the tiny test models replace the packaged MiniLM
(flags appended to ``ray-ner train``, where later flags win), and the data is the demo's
generator at a smaller size. The jobs join the session's Ray head, whose workers
run in another folder, so the README's relative paths must mean the folder the commands ran
in. A README whose commands, flags or paths drift from the code fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.demo import DemoConfig
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


def test_quickstart_block_is_train_evaluate_tag():
    assert [argv[1] for argv in quickstart_commands()] == ["train", "evaluate", "tag"]


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(ray_head, tiny_dirs, tmp_path):
    write_demo_data(tmp_path)
    test_models = {"train": ["--encoder", tiny_dirs["distilbert"], "--decoder", tiny_dirs["bert"], "--max-length", "32"]}
    # the session's Ray head runs its workers in another folder: the README's relative paths
    # must mean the folder the commands run in, as on a user's own cluster
    env = {**os.environ, "RAY_ADDRESS": ray_head["address"], "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
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
