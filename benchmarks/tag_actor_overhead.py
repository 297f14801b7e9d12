"""Where jobs.tag loses to the bare loop: the same TagActor work, three ways, in one run.

    .venv/bin/python benchmarks/tag_actor_overhead.py --precision bf16   # corpus: bench_out/corpus-mixed-20000

1. ``plain``: ``TagActor`` in a plain process (no Ray), called on the corpus in
   ``--batch-size`` row slices, exactly as Ray Data would slice it.
2. ``ray-actor``: the same class as a plain Ray actor on a local cluster (no Ray Data),
   the same slices put in the object store and called one after the other.
3. ``jobs.tag``: the job itself; its time in calls is its run time less its
   ``startup_s`` (``_manifest.json``).

All three include the actor's windows, decoding and entity spans; 1 and 2 exclude
reading and writing. The difference between 1 and 2 is being a Ray actor, between 2
and 3 what the rest of the job (read and write tasks, Ray Data's executor and its
actors, progress) takes from the actor on this machine's cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

from tag_vs_pipeline import child_env, jobs_tag_command  # this script's folder is on sys.path when run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import glob, json, sys, time
import pyarrow as pa
from pipelines.tagging.actor import TagActor
from pipelines.tagging.config import TagConfig, TagPlan
from pipelines.tagging.reader import jsonl_block, read_jsonl
from pipelines.tagging.model import check_model

how, model, corpus, precision, batch, threads, max_length = sys.argv[1:8]
batch, threads = int(batch), int(threads)
cfg = TagConfig(model=model, input=corpus, output="unused", max_length=int(max_length), torch_threads=threads, mixed_precision=precision)
info = check_model(model)
plan = TagPlan.resolve(cfg, info, "jsonl")
blocks = []
for path in sorted(glob.glob(corpus + "/*.jsonl")):
    with open(path, "rb") as fh:
        blocks += [jsonl_block(records, plan.column, False) for records, _ in read_jsonl(fh, path, 1024, plan.column, False, 0)]
table = pa.concat_tables(blocks)
slices = [table.slice(s, batch) for s in range(0, table.num_rows, batch)]
if how == "plain":
    actor = TagActor(plan, None)
    call = actor
else:
    import ray

    ray.init(num_cpus=threads, log_to_driver=False)
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}  # as jobs.tag starts its actors
    remote = ray.remote(num_cpus=1, runtime_env={"env_vars": env})(TagActor).remote(plan, None)
    ray.get(remote.__ray_ready__.remote())
    slices = [ray.put(s) for s in slices]
    call = lambda s: ray.get(remote.__call__.remote(s))  # noqa: E731
t = time.time()
words = 0
for s in slices:
    out = call(s)
    words += sum(len(x) for x in out.column("labels").to_pylist() if x)
seconds = time.time() - t
print(json.dumps({"how": how, "seconds_in_calls": round(seconds, 2), "words": words, "words_per_s": round(words / seconds)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/conll-minilm-encoder-e5")
    ap.add_argument("--corpus", default="bench_out/corpus-mixed-20000", help="a folder of JSONL files (tag_vs_pipeline.py writes them)")
    ap.add_argument("--precision", default="none", help="--mixed-precision of every contender: none (fp32) or bf16")
    ap.add_argument("--batch-size", type=int, default=2048, help="rows per actor call (jobs.tag's --batch-size)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default="bench_out/tagged-actor-overhead")
    args = ap.parse_args()
    env = child_env()
    if not glob.glob(os.path.join(args.corpus, "*.jsonl")):
        raise SystemExit(f"no JSONL files in {args.corpus}: run benchmarks/tag_vs_pipeline.py first")
    results = []
    for how in ("plain", "ray-actor"):
        cmd = [sys.executable, "-c", CHILD, how, args.model, args.corpus, args.precision, str(args.batch_size), str(args.threads), str(args.max_length)]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    flags = ["--actors", "1", "--cpus-per-actor", "1", "--batch-size", str(args.batch_size), "--mixed-precision", args.precision]
    cmd = jobs_tag_command(args.model, args.corpus, args.out, args.max_length, args.threads, flags)
    subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
    run = json.load(open(os.path.join(ROOT, args.out, "_manifest.json")))["this_run"]
    calls = run["seconds"] - run["startup_s"]
    results.append({"how": "jobs.tag", "seconds_in_calls": round(calls, 2), "startup_s": run["startup_s"], "seconds": run["seconds"],
                    "words": run["words"], "words_per_s": round(run["words"] / calls)})  # fmt: skip
    print(json.dumps(results[-1]), flush=True)
    base = results[0]["seconds_in_calls"]
    for r in results:
        print(f"{r['how']:<10} {r['seconds_in_calls']:7.1f} s in calls  {r['seconds_in_calls'] / base:5.2f}x the plain process")


if __name__ == "__main__":
    main()
