"""What a training run costs before and after its steps: tiny runs back to back on one local Ray.

    .venv/bin/python benchmarks/train_startup.py                         # this tree
    .venv/bin/python benchmarks/train_startup.py --checkout /tmp/before  # another tree (e.g. git worktree add)

Each run is ``jobs.train.main`` in one driver (as the tests and every Tune trial call it):
60 synthetic sentences, the tiny BERT of tests/conftest.py as an encoder-only tagger,
``--max-steps 10``, so the steps take well under a second and the wall time is start-up:
reading, Ray Train's controller and worker processes, their imports, and the output. The
first run also warms Ray's task workers; the later ones are what a trial of a search pays.
Beside the wall time: the peak RSS of Ray Train's controller process (it coordinates and
never runs the model). Prints one line per run and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def driver(runs: int, work: str) -> None:
    """Runs in a subprocess whose sys.path starts at the ``--checkout`` tree."""
    import psutil
    import ray

    from jobs import train as train_job
    from ner_core.sample_data import make_sentences, write_conll
    from train_memory import tiny_bert

    bert = tiny_bert(work)
    write_conll(os.path.join(work, "train.txt"), make_sentences(60, seed=3))
    write_conll(os.path.join(work, "dev.txt"), make_sentences(10, seed=4))
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    results = []
    for i in range(runs):
        peak = {"rss": 0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for p in psutil.process_iter(["cmdline", "memory_info"]):
                    if "TrainController" in " ".join(p.info["cmdline"] or []) and p.info["memory_info"]:
                        peak["rss"] = max(peak["rss"], p.info["memory_info"].rss)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        argv = ["--train", os.path.join(work, "train.txt"), "--dev", os.path.join(work, "dev.txt"), "--output", os.path.join(work, f"model{i}"),
                "--arch", "encoder", "--encoder", bert, "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--max-steps", "10", "--log-every", "0"]  # fmt: skip
        assert train_job.main(argv) == 0
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
        results.append({"run": i, "wall_s": round(wall, 1), "controller_rss_mib": round(peak["rss"] / 2**20)})
        print(f"### run {i}: {wall:.1f} s, controller peak RSS {peak['rss'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    print(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", default=ROOT, help="the source tree whose jobs.train runs (default: this one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        sys.path.insert(0, args.checkout)
        driver(args.runs, args.work)
        return
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": args.checkout}
        cmd = [sys.executable, os.path.abspath(__file__), "--driver", "--checkout", args.checkout, "--runs", str(args.runs), "--work", work]
        out = subprocess.run(cmd, env=env, cwd=work, stdout=subprocess.PIPE, text=True, check=True).stdout
    runs = json.loads(out.strip().splitlines()[-1])
    later = [r["wall_s"] for r in runs[1:]] or [runs[0]["wall_s"]]
    summary = {"checkout": args.checkout, "runs": runs, "later_runs_mean_s": round(sum(later) / len(later), 1)}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
