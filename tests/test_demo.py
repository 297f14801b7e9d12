"""The README's main command (``python -m jobs.demo``) runs the whole loop: generated
data -> fine-tuned packaged MiniLM -> evaluation -> bulk-tagged corpus, and ends with a
summary of what was trained and tagged, where everything is and what to run next.

Run here on a smaller sample (the same code path) against the session's Ray head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from collections import Counter

import pyarrow.dataset as pads
import pytest

from test_console import RAY_INTERNALS  # the same list of Ray internals the console tests check

pytestmark = pytest.mark.slow  # the whole demo: trains, evaluates and tags


def test_demo_runs_the_whole_loop_and_shows_the_output(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    args = ["--output", str(out), "--train-sentences", "48", "--dev-sentences", "16", "--corpus-rows", "40", "--epochs", "1"]
    proc = subprocess.run([sys.executable, "-m", "jobs.demo", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "epoch 1/1:", "  dev: F1", "tagging: 40/40 rows", "Done in"):
        assert step in proc.stdout, proc.stdout
    # the console carries the demo's own lines only: no Ray internals, nothing twice
    for marker in RAY_INTERNALS:
        assert marker not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    ends = proc.stdout[proc.stdout.index("Done in") :]
    # the closing summary: what was trained, what was tagged, where everything is, what to run next
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert f"best dev F1 {metrics['best_dev_f1']:.3f}" in ends
    for path in (out / "model", out / "model" / "report.html", out / "tagged", out / "eval" / "report.html"):
        assert str(path) in ends and path.exists()
    assert f"tensorboard --logdir {out / 'model' / 'tensorboard'}" in ends
    assert "ray-ner tag --model" in ends and "ray-ner evaluate --model" in ends

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
    assert f"tagged    {manifest['rows_written']} rows, {manifest['rows_failed']} failed, of {manifest['rows_read']} read" in ends
    counts = Counter(e["type"] for r in rows for e in r["entities"])
    assert "entities  " + (", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none found") in ends
    first = min(rows, key=lambda r: r["id"])
    assert f"    {first['text']}\n" in ends
