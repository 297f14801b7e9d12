"""The README's main command (``python -m jobs.demo``) runs the whole loop: generated
data -> fine-tuned packaged MiniLM -> evaluation -> bulk-tagged corpus, and shows it.

Run here on a smaller sample (the same code path) against the session's Ray head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.dataset as pads


def test_demo_runs_the_whole_loop_and_shows_the_output(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    args = ["--output", str(out), "--train-sentences", "48", "--dev-sentences", "16", "--corpus-rows", "40", "--epochs", "1"]
    proc = subprocess.run([sys.executable, "-m", "jobs.demo", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "entities found:", "a few tagged rows"):
        assert step in proc.stdout, proc.stdout
    assert str(out / "tagged") in proc.stdout

    # the trained model is a real saved tagger with the sample's label set
    config = json.loads((out / "model" / "config.json").read_text())
    assert set(config["id2label"].values()) >= {"O", "B-PER", "I-PER", "B-LOC", "B-ORG"}

    rows = pads.dataset(str(out / "tagged"), format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in rows) == list(range(40))
    for r in rows:
        assert len(r["labels"]) == len(r["tokens"])
        for e in r["entities"]:
            assert r["text"][e["start"] : e["end"]] == e["text"]
    manifest = json.loads((out / "tagged" / "_manifest.json").read_text())
    assert (manifest["rows_read"], manifest["rows_written"], manifest["rows_failed"]) == (40, 40, 0)
