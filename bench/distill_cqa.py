"""Experiment: does training with teacher saliency rationales beat plain fine-tuning on CQA?

A thin wrapper over :mod:`distill.pipeline` (the sequence ``python -m distill experiment`` and
the app run): teacher rationale extraction on the train split, ``standard``, ``saliency`` and
``dss`` students trained with the same seed, steps and data, each evaluated on the same dev
split (or ``--test-data``) beside the untrained student, then the overlap analysis of the
rationales. Stages are timed from the run folders' summaries; the table is the pipeline's
``results.md`` (the teacher's accuracy on the extracted examples is in the extraction summary).

The rationale target defaults to the teacher's own answer (``generated``, the paper's method);
``--target gold`` is for analysis only and every table says so.

    python bench/distill_cqa.py --train 300 --dev 100 --steps 100 --batch-size 4
    python bench/distill_cqa.py --train 8741 --dev 1000 --epochs 3 --batch-size 32   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.pipeline import run_plan  # noqa: E402
from distill.plan import Plan  # noqa: E402
from distill.runs import atomic_write_json, read_json  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cqa/cqa_train.json"))
    ap.add_argument("--test-data", help="final accuracy on this file instead of the dev split")
    ap.add_argument("--train", type=int, default=300, help="train examples")
    ap.add_argument("--dev", type=int, default=100, help="dev examples (carved from the file)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--method", default="saliency")
    ap.add_argument(
        "--target",
        choices=["generated", "gold"],
        default="generated",
        help="rationale target: the teacher's own answer, or gold (analysis only)",
    )
    ap.add_argument("--faithfulness-limit", type=int, default=40)
    ap.add_argument("--extract-batch", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, help="default: the task's longest answer + 8")
    ap.add_argument("--modes", nargs="+", default=["standard", "saliency", "dss", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--no-overlap", action="store_true", help="skip the overlap analysis")
    ap.add_argument("--out", default=str(ROOT / "bench/out/distill_cqa"))
    args = ap.parse_args()

    plan = Plan(
        task="cqa",
        data=args.data,
        out=args.out,
        teacher=args.teacher,
        student=args.student,
        modes=args.modes,
        train_size=args.train,
        dev_size=args.dev,
        test_data=args.test_data,
        top_k=args.top_k,
        method=args.method,
        target=args.target,
        seeds=args.seeds,
        steps=None if args.epochs else args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        extract_batch=args.extract_batch,
        max_new_tokens=args.max_new_tokens,
        faithfulness_limit=args.faithfulness_limit,
        dev_limit=args.dev,
    )
    last = {"stage": None}

    def progress(p: dict) -> None:
        if p.get("stage") != last["stage"]:
            last["stage"] = p.get("stage")
            log(str(p.get("stage")))

    result = run_plan(plan, progress=progress)
    if result.status != "finished":
        log(f"stopped at {result.stage}; rerun the same command to resume")
        return
    out = Path(args.out)
    times = {}
    for name in ["extract"] + [f"train-{m}-s{s}" for m in args.modes for s in args.seeds]:
        summary = read_json(out / name / "summary.json") or {}
        if summary:
            times[name] = summary.get("seconds", summary.get("elapsed_s"))
    report = {"settings": vars(args), "times_s": times, "results": str(result.table_json)}
    if plan.needs_rationales and not args.no_overlap:
        from distill.overlap import load_rationales, overlap_report

        overlap = overlap_report(load_rationales(out / "extract"), seed=args.seeds[0])
        report["overlap"] = {"summary": overlap.summary, "definitions": overlap.definitions}
        log(f"overlap: {json.dumps(overlap.summary)}")
    atomic_write_json(out / "report.json", report)
    print(Path(result.table_md).read_text(encoding="utf-8"))
    print(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
