"""What the scores cost: jobs.tag of this checkout against jobs.tag of another (one without scores).

    git worktree add /tmp/before c3d480d     # the last commit before scores
    .venv/bin/python benchmarks/scores_cost.py --before /tmp/before --model runs/conll-minilm-encoder-e1 --sentences 20000

Both run on the same CoNLL-2003 raw-text corpus as ``tag_vs_pipeline.py`` (its
``write_corpus``), with the same model, flags and threads, alternating ``--pairs`` times so
the machine's drift hits both alike; each rate is the job's own clock (``this_run``).
The ratio is this checkout's words/s over the other's: the change's cost (below 1) or gain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from statistics import median_low

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.tag_vs_pipeline import child_env, conll_texts, corpus_dir, jobs_tag_command, precision_flags, run_measured, write_corpus  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="another checkout of the project (its jobs.tag runs from there)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003"))
    ap.add_argument("--sentences", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    args = ap.parse_args()

    corpus = corpus_dir(args.out, args.sentences)
    write_corpus(conll_texts(args.data), args.sentences, corpus)
    flags = ["--actors", "1", "--cpus-per-actor", "1", *precision_flags(args.precision)]
    runs: dict[str, list[float]] = {"after": [], "before": []}
    for pair in range(args.pairs):
        for name, root in (("after", ROOT), ("before", os.path.abspath(args.before))):
            out = os.path.join(args.out, f"scores-cost-{name}")
            env = {**child_env(), "PYTHONPATH": root}
            cmd = jobs_tag_command(os.path.abspath(args.model), corpus, out, args.max_length, args.threads, flags)  # the other checkout runs in its own folder
            run_measured(cmd, env, cwd=root)
            run = json.load(open(os.path.join(out, "_manifest.json")))["this_run"]
            runs[name].append(run["words"] / run["seconds"])
            print(f"pair {pair + 1} {name}: {runs[name][-1]:,.0f} words/s ({run['seconds']} s)", flush=True)
    after, before = median_low(runs["after"]), median_low(runs["before"])
    print(json.dumps({"sentences": args.sentences, "precision": args.precision, "words_per_s": runs, "median_after": after, "median_before": before, "ratio": after / before}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
