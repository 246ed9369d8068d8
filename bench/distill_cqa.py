"""Experiment: does training with teacher saliency rationales beat plain fine-tuning on CQA?

Teacher = Qwen2.5-Coder-1.5B pack, student = SmolLM2-135M pack, CommonsenseQA from
../shared/datasets. Stages, each timed: teacher rationale extraction on the train subset,
teacher accuracy on the dev split, overlap analysis, then `standard`, `saliency` and `dss`
students trained with the same seed, steps and data, each evaluated on the same dev split
(accuracy with a 95% Wilson interval, and choice-scoring accuracy).

Sizes are arguments so a GPU can run the full set, e.g.
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

from distill.data import load_task, split  # noqa: E402
from distill.evaluate import evaluate  # noqa: E402
from distill.extract import RATIONALES, extract  # noqa: E402
from distill.overlap import load_rationales, overlap_report  # noqa: E402
from distill.runs import atomic_write_json, atomic_write_text  # noqa: E402
from distill.train import TrainConfig, train  # noqa: E402
from explain.models import load_model  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cqa/cqa_train.json"))
    ap.add_argument("--train", type=int, default=300, help="train examples")
    ap.add_argument("--dev", type=int, default=100, help="dev examples (carved from the file)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--target", choices=["generated", "gold"], default="gold")
    ap.add_argument("--faithfulness-limit", type=int, default=40)
    ap.add_argument("--teacher-choices", action="store_true", help="also choice-score the teacher")
    ap.add_argument("--extract-batch", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["standard", "saliency", "dss"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/out/distill_cqa"))
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = args.train + args.dev
    examples = load_task("cqa", args.data, limit=limit)
    train_ex, dev_ex = split(examples, args.dev, args.seed)
    log(f"CQA: {len(train_ex)} train, {len(dev_ex)} dev (seed {args.seed})")
    times: dict[str, float] = {}
    report: dict = {"settings": vars(args), "times_s": times}

    t0 = time.perf_counter()
    teacher = load_model(args.teacher)
    log(f"teacher {teacher.describe()}")
    ext_dir = out / f"extract-{args.method}-k{args.top_k}-{args.target}"
    ext = extract(
        teacher,
        train_ex,
        ext_dir,
        task="cqa",
        method=args.method,
        top_k=args.top_k,
        target=args.target,
        batch_size=args.extract_batch,
        max_new_tokens=8,
        seed=args.seed,
        faithfulness_limit=args.faithfulness_limit,
        config={"data": args.data, "limit": limit, "dev_size": args.dev, "split": "train"},
        progress=lambda p: log(
            f"extract {p.get('done')}/{p.get('total')} {(p.get('examples_per_s') or 0):.3f} ex/s"
        ),
    )
    times["extract"] = time.perf_counter() - t0
    report["extraction"] = ext
    log(f"extraction done: {ext}")

    t0 = time.perf_counter()
    tres = evaluate(
        teacher,
        "cqa",
        dev_ex,
        mode="standard",
        batch_size=4,
        max_new_tokens=8,
        choices=args.teacher_choices,
    )
    times["teacher_eval"] = time.perf_counter() - t0
    report["teacher"] = {k: v for k, v in tres.to_dict().items() if k != "predictions"}
    log(f"teacher dev accuracy {tres.accuracy:.3f} choice {tres.choice_accuracy}")
    del teacher

    t0 = time.perf_counter()
    overlap = overlap_report(load_rationales(ext_dir / RATIONALES), seed=args.seed)
    times["overlap"] = time.perf_counter() - t0
    report["overlap"] = {"summary": overlap.summary, "definitions": overlap.definitions}
    log(f"overlap: {json.dumps(overlap.summary)}")

    report["students"] = {}
    for mode in args.modes:
        t0 = time.perf_counter()
        cfg = TrainConfig(
            student=args.student,
            task="cqa",
            data=args.data,
            mode=mode,
            rationales=str(ext_dir) if mode in ("saliency", "hint") else None,
            steps=args.steps if args.epochs is None else None,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            dev_size=args.dev,
            dev_limit=args.dev,
            limit=limit,
            eval_every=0,
            save_every=25,
            out=str(out / f"train-{mode}"),
        )
        summary = train(
            cfg,
            progress=lambda p: (
                p.get("loss") is not None
                and p["step"] % 10 == 0
                and log(f"{mode} step {p['step']} loss {p['loss']:.4f}")
            ),
        )
        times[f"train_{mode}"] = time.perf_counter() - t0
        report["students"][mode] = {
            k: summary.get(k)
            for k in (
                "accuracy",
                "ci_low",
                "ci_high",
                "choice_accuracy",
                "n",
                "final_loss",
                "steps",
                "elapsed_s",
                "accuracy_no_hint",
            )
        }
        log(f"{mode}: {report['students'][mode]}")

    atomic_write_json(out / "report.json", report)
    lines = [
        "| stage / model | accuracy | 95% CI | choice acc. | time (s) |",
        "|---|---|---|---|---|",
    ]
    t = report["teacher"]
    lines.append(
        f"| teacher ({args.teacher}) | {t['accuracy']:.3f} | [{t['ci_low']:.3f}, "
        f"{t['ci_high']:.3f}] | {t['choice_accuracy']} | {times['teacher_eval']:.0f} |"
    )
    for mode, s in report["students"].items():
        lines.append(
            f"| student {mode} | {s['accuracy']:.3f} | [{s['ci_low']:.3f}, "
            f"{s['ci_high']:.3f}] | {s['choice_accuracy']} | {times['train_' + mode]:.0f} |"
        )
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
