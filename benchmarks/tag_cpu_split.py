"""Where a jobs.tag run spends the machine's CPU: seconds per process kind, against its wall time.

    .venv/bin/python benchmarks/tag_cpu_split.py --corpus bench_out/corpus-mixed-20000 -- --mixed-precision none

Runs ``jobs.tag`` once (flags after ``--`` are passed on; the defaults are the
``tag_vs_pipeline.py`` ones) and reads the user+system CPU time of every process in its
tree from ``/proc`` every ``--every`` seconds, keeping each process's last reading. The
cost of reading ``/proc/PID/stat`` is small (no smaps walk, unlike the PSS sampling of
the memory runs). Processes are grouped by title (``ray::MapWorker(...TagActor)``, the
driver ``python``, ``raylet``...), so the model's share of the cores and what Ray's
control plane takes beside it are figures, not guesses.

Processes that start and end between two readings are missed, so the sum is a lower bound;
``--every 0.5`` narrows the gap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from tag_vs_pipeline import child_env, jobs_tag_command, process_kind  # this script's folder is on sys.path when run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/conll-minilm-encoder-e5")
    ap.add_argument("--corpus", default="bench_out/corpus-mixed-20000", help="a folder of JSONL files (tag_vs_pipeline.py writes them)")
    ap.add_argument("--out", default="bench_out/tagged-cpu-split")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("flags", nargs="*", help="extra jobs.tag flags (after --)")
    args = ap.parse_args()
    import psutil

    env = child_env()
    threads = str(os.cpu_count() or 1)
    cmd = jobs_tag_command(args.model, args.corpus, args.out, 128, threads, ["--actors", "1", "--cpus-per-actor", "1", *args.flags])
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    root = psutil.Process(proc.pid)
    seen: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                t = p.cpu_times()
                kind = process_kind(p)  # read each time: a worker takes its ray:: title after it starts
                seen[p.pid] = (kind, t.user + t.system)  # own time only: a reaped child's time would be counted twice
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(args.every)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"jobs.tag failed ({proc.returncode})")
    by_kind: dict[str, float] = {}
    for kind, cpu in seen.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + cpu
    manifest = json.load(open(os.path.join(args.out, "_manifest.json")))
    total = sum(by_kind.values())
    result = {
        "flags": " ".join(args.flags),
        "wall_s": round(wall, 1),
        "job_seconds": manifest["this_run"]["seconds"],
        "words_per_s": manifest["this_run"]["words_per_s"],
        "cpus": os.cpu_count(),
        "cpu_s_total": round(total, 1),
        "cpu_s_by_process": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
    }
    print(json.dumps(result, indent=2))
    width = max(len(k) for k in by_kind)
    print(f"\n{'process':<{width}}  cpu s  share of {os.cpu_count()} cores x {wall:.0f} s")
    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{k:<{width}}  {v:5.1f}  {v / (wall * (os.cpu_count() or 1)):6.1%}")


if __name__ == "__main__":
    main()
