"""What the evaluation batch size costs and changes: a trained student on a test file.

The cpu preset evaluates every student on the test file (greedy generation, then option
scoring), on its dev split, and the untrained student twice; at batch 8 that is about a
quarter of an experiment's wall time (distill/plan.py). This runs ``distill.evaluate`` on one
model at each batch size, in turn and then again in reverse order (so a drift in the
machine's speed falls on both), and compares every prediction and option log-probability with
the first batch size's:

    python bench/eval_batch.py --run bench/out/exp5-esnli-s2/train-standard-s2 \
        --test-data bench/out/heldout/esnli_test.jsonl --batch-sizes 8 32 \
        --against bench/out/exp5-esnli-s2/predictions-standard-s2.jsonl

Writes one JSON line per (batch size, pass) and a summary to --out (appended).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.data import load_task  # noqa: E402
from distill.evaluate import evaluate, resolve_model  # noqa: E402
from distill.runs import RunDir  # noqa: E402


def _timed(loaded, task, examples, batch_size, max_new_tokens):
    marks: dict[str, float] = {}

    def progress(rec: dict) -> None:
        marks.setdefault(rec.get("stage", ""), time.perf_counter())

    t0 = time.perf_counter()
    res = evaluate(loaded, task, examples, batch_size=batch_size, progress=progress,
                   max_new_tokens=max_new_tokens)  # fmt: skip
    end = time.perf_counter()
    split = marks.get("scoring options", end)
    return res, {"generate_s": round(split - t0, 2), "score_s": round(end - split, 2),
                 "total_s": round(end - t0, 2)}  # fmt: skip


def _diff(a, b) -> dict:
    """How far two evaluations' per-example records differ."""
    pred = sum(x["prediction"] != y["prediction"] for x, y in zip(a, b))
    choice = sum(x["choice_prediction"] != y["choice_prediction"] for x, y in zip(a, b))
    lp = 0.0
    for x, y in zip(a, b):
        for k, v in (x.get("option_logprobs") or {}).items():
            lp = max(lp, abs(v - y["option_logprobs"][k]))
    return {"predictions_differ": pred, "choices_differ": choice, "max_logprob_diff": lp}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished training run folder")
    p.add_argument("--test-data", required=True)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--against", help="the experiment's predictions file for this model")
    p.add_argument("--out", default="bench/results/eval_batch.jsonl")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    run = RunDir(Path(args.run))
    task = run.config()["settings"]["task"]
    examples = load_task(task, args.test_data, limit=args.limit)
    loaded, _ = resolve_model(args.run)
    first = None
    rows = []
    order = list(args.batch_sizes) + list(reversed(args.batch_sizes))
    for n, bs in enumerate(order):
        res, times = _timed(loaded, task, examples, bs, args.max_new_tokens)
        first = first or (bs, res.predictions)
        row = {"run": args.run, "task": task, "n": len(examples), "batch_size": bs,
               "pass": 1 + (n >= len(args.batch_sizes)), "accuracy": res.accuracy,
               "choice_accuracy": res.choice_accuracy, **times,
               **_diff(first[1], res.predictions), "against_batch": first[0],
               "threads": torch.get_num_threads()}  # fmt: skip
        if args.against:  # the experiment's own evaluation (batch 8) of the same model
            with open(args.against, encoding="utf-8") as fh:
                theirs = [json.loads(line) for line in fh]
            row["against_experiment"] = _diff(theirs, res.predictions)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = [r["total_s"] for r in rows if r["batch_size"] == args.batch_sizes[0]]
    summary = {"run": args.run, "summary": True, "mean_total_s": {}}
    for bs in args.batch_sizes:
        ts = [r["total_s"] for r in rows if r["batch_size"] == bs]
        summary["mean_total_s"][bs] = round(sum(ts) / len(ts), 2)
    summary["ratio_to_first"] = {
        bs: round(summary["mean_total_s"][bs] / (sum(base) / len(base)), 3)
        for bs in args.batch_sizes
    }
    print(json.dumps(summary), flush=True)
    with open(args.out, "a", encoding="utf-8") as fh:
        for r in rows + [summary]:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
