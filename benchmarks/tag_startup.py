"""What ``ray-ner tag`` spends before its first rows, against a bare loop's start-up, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tag_startup.py --model bench_out/serve_load/minilm-encoder-tagger   # about 3 min

Each round, in fresh processes one after the other on ``--rows`` rows of the raw-text corpus
(so tagging itself is a small part):
- ``jobs.tag``: the whole command's wall time, and from its ``_manifest.json`` the job's own
  clock (``seconds``) with its start-up split (``startup_parts``: planning, actor start, model
  load, first rows). Wall time less the job's clock is Python's start, the CLI's imports,
  starting a local Ray and stopping it.
- peer, a Ray start: a process that imports Ray, starts a local cluster as the job does
  (``pipelines.ray_env.init_ray``) and stops it.
- limit, the bare loop (``tag_vs_pipeline.py``'s): Python, torch, transformers, the model,
  then the same rows tagged: the start-up nothing can avoid.
Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tag_vs_pipeline import BARE_LOOP_CHILD, child_env, jobs_tag_command  # this script's folder is on sys.path when run

RAY_CHILD = r"""
import time
t = time.time()
import ray
from pipelines.ray_env import init_ray
init_ray()  # the local Ray the job starts (dashboard included)
up = time.time() - t
ray.shutdown()
print(up)
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bench_out/serve_load/minilm-encoder-tagger")
    ap.add_argument("--corpus", default="bench_out/corpus-mixed-20000")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()

    env = child_env()
    work = tempfile.mkdtemp(prefix="tag_startup_")
    corpus = os.path.join(work, "in")
    os.makedirs(corpus)
    lines = [line for p in sorted(glob.glob(os.path.join(args.corpus, "*.jsonl"))) for line in open(p, encoding="utf-8")][: args.rows]
    with open(os.path.join(corpus, "part-0.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    flags = ["--actors", "1", "--cpus-per-actor", "1", "--mixed-precision", "none" if args.precision == "fp32" else args.precision]
    rows = []
    for rnd in range(args.rounds):
        out = os.path.join(work, f"out-{rnd}")
        wall, _ = timed(jobs_tag_command(args.model, corpus, out, 128, args.threads, flags), env)
        run = json.load(open(os.path.join(out, "_manifest.json"), encoding="utf-8"))["this_run"]
        ray_wall, ray_out = timed([sys.executable, "-c", RAY_CHILD], env)
        loop_wall, loop_out = timed([sys.executable, "-c", BARE_LOOP_CHILD, args.model, corpus, str(args.threads), args.precision, "128"], env)
        loop = json.loads(loop_out.strip().splitlines()[-1])
        row = {
            "round": rnd,
            "job_wall_s": round(wall, 2),
            "job_outside_clock_s": round(wall - run["seconds"], 2),
            "job_startup_s": run["startup_s"],
            **run.get("startup_parts", {}),
            "job_after_first_rows_s": round(run["seconds"] - run["startup_s"], 2),
            "ray_start_s": round(float(ray_out.strip().splitlines()[-1]), 2),
            "ray_start_and_stop_wall_s": round(ray_wall, 2),
            "loop_wall_s": round(loop_wall, 2),
            "loop_startup_s": round(loop["startup_s"], 2),
            "loop_tagging_s": round(loop["seconds"], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    median = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "round"}
    median["job_wall_vs_loop_wall"] = round(median["job_wall_s"] / median["loop_wall_s"], 2)
    print(json.dumps({"median": median}))


if __name__ == "__main__":
    main()
