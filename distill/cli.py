"""``python -m distill``: extract rationales, train students, evaluate, compare, analyse overlap.

Under ``accelerate launch -m distill extract ...`` the extraction shards across processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from explain.errors import KDLensError, run_cli
from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER


def _examples(args: argparse.Namespace):
    from .data import load_task, split

    examples = load_task(args.task, args.data, limit=args.limit)
    if getattr(args, "split", "all") == "all":
        return examples
    train, dev = split(examples, args.dev_size, args.seed)
    return train if args.split == "train" else dev


def _dev_size(text: str) -> float | int:
    return float(text) if "." in text else int(text)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="ex", file=sys.stderr)

    def update(p: dict) -> None:
        if "done" in p:
            bar.n = p["done"]
            bar.set_postfix_str(p.get("message", ""))
            bar.refresh()

    return bar, update


def cmd_extract(args: argparse.Namespace) -> int:
    from explain.models import load_model

    from .data import data_hash
    from .extract import extract
    from .runs import safe_run_dir

    examples = _examples(args)
    out = Path(args.out) if "/" in args.out else safe_run_dir(args.runs, args.out)
    teacher = load_model(args.teacher, device=args.device, dtype=args.dtype)
    bar, update = _bar(len(examples), "extract")
    settings = {"n_steps": args.steps} if args.steps else None
    summary = extract(
        teacher,
        examples,
        out,
        task=args.task,
        method=args.method,
        top_k=args.top_k,
        target=args.target,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        with_faithfulness=not args.no_faithfulness,
        faithfulness_limit=args.faithfulness_limit,
        rows=args.rows,
        seed=args.seed,
        method_settings=settings,
        config={
            "data": str(args.data),
            "data_hash": data_hash(args.data),
            "split": args.split,
            "dev_size": args.dev_size,
            "limit": args.limit,
        },
        progress=update,
    )
    bar.close()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        student=args.student,
        task=args.task,
        data=args.data,
        mode=args.mode,
        rationales=args.rationales,
        alpha=args.alpha,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
        dev_size=args.dev_size,
        dev_limit=args.dev_limit,
        limit=args.limit,
        eval_every=args.eval_every,
        save_every=args.save_every,
        out=args.out,
    )

    def progress(p: dict) -> None:
        if "loss" in p or "dev_accuracy" in p:
            print(json.dumps(p), file=sys.stderr, flush=True)

    summary = train(cfg, progress=progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def predictions_path(args: argparse.Namespace) -> Path:
    """--predictions, else beside a run folder's model, else in the current folder."""
    if args.predictions:
        return Path(args.predictions)
    name = f"predictions-{args.task}-{args.split}{'-hint' if args.with_rationales else ''}.jsonl"
    model = Path(args.model)
    if (model / "config.json").is_file() and (model / "summary.json").is_file():
        return model / name
    return Path(name)


def _stage_bars():
    """A progress callback for ``evaluate``: one tqdm bar on stderr per stage."""
    from tqdm import tqdm

    bars: dict[str, object] = {}

    def update(p: dict) -> None:
        stage = p.get("stage")
        if stage is None or "total" not in p:
            return
        bar = bars.get(stage)
        if bar is None:
            unit = "q" if stage == "scoring options" else "ex"
            bar = bars[stage] = tqdm(total=p["total"], desc=stage, unit=unit, file=sys.stderr)
        bar.n = p.get("step", 0)
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .train import load_rationale_map

    examples = _examples(args)
    rationales = load_rationale_map(args.with_rationales) if args.with_rationales else None
    mode = args.mode or ("hint" if rationales else None)
    update, close = _stage_bars()
    try:
        result = evaluate(
            args.model,
            args.task,
            examples,
            mode=mode,
            rationales=rationales,
            batch_size=args.batch_size,
            progress=update,
            choices=not args.no_choices,
        )
    finally:
        close()
    from .runs import atomic_write_text

    atomic_write_text(
        predictions_path(args), "".join(json.dumps(p) + "\n" for p in result.predictions)
    )
    print(f"predictions: {predictions_path(args)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"accuracy        {result.accuracy:.4f}  95% CI [{result.ci_low:.4f}, "
            f"{result.ci_high:.4f}]  n={result.n}"
        )
        if result.choice_accuracy is not None:
            print(f"choice accuracy {result.choice_accuracy:.4f} (length-normalised ranking)")
        if result.choice_accuracy_sum is not None:
            print(f"choice acc. sum {result.choice_accuracy_sum:.4f} (summed log-likelihood)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate import compare, compare_pairs, write_comparison

    df = compare(args.runs_dirs)
    print(df.to_string(index=False))
    csv, md = write_comparison(df, args.out)
    print(f"wrote {csv} and {md}", file=sys.stderr)
    if len(args.runs_dirs) >= 2:
        pairs, skipped = compare_pairs(
            args.runs_dirs, key=args.metric, n_boot=args.n_boot, seed=args.seed
        )
        for a, b in skipped:
            print(f"skipped {a} vs {b}: not scored on the same examples", file=sys.stderr)
        if len(pairs):
            print(f"\npaired ({args.metric}; 95% paired bootstrap CI, McNemar exact p):")
            print(pairs.to_string(index=False))
            csv, md = write_comparison(pairs, args.out, name="pairs")
            print(f"wrote {csv} and {md}", file=sys.stderr)
    return 0


def cmd_overlap(args: argparse.Namespace) -> int:
    from .overlap import load_rationales, overlap_report

    records = load_rationales(args.rationales)
    if args.task:
        other = {r.get("task") for r in records} - {args.task, None}
        if other:
            raise KDLensError(f"the rationale file holds task {other.pop()!r}, not {args.task!r}")
    report = overlap_report(
        records, seed=args.seed, n_random=args.n_random, drop_stopwords=args.drop_stopwords
    )
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
        return 0
    print(report.summary_dataframe().to_string(index=False))
    print("\nDefinitions:")
    for name, text in report.definitions.items():
        print(f"  {name}: {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(sp, need_data=True):
        sp.add_argument("--task", required=True, choices=["cqa", "esnli", "anli1", "svamp"])
        sp.add_argument("--data", required=need_data, help="JSONL/CSV file")
        sp.add_argument("--limit", type=int, help="read at most N records")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--dev-size", type=_dev_size, default=0.1, help="fraction or count")

    e = sub.add_parser("extract", help="teacher rationales over a dataset")
    data_args(e)
    e.add_argument("--teacher", default=DEFAULT_TEACHER)
    e.add_argument("--split", choices=["all", "train", "dev"], default="all")
    e.add_argument("--method", default="saliency")
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--target", choices=["generated", "gold"], default="generated")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--max-new-tokens", type=int, default=16)
    e.add_argument("--steps", type=int, help="integrated_gradients steps")
    e.add_argument(
        "--rows",
        choices=["answer", "tokens"],
        default="answer",
        help="attribute the whole answer (one backward) or each answer token",
    )
    e.add_argument("--no-faithfulness", action="store_true")
    e.add_argument("--faithfulness-limit", type=int, help="ERASER figures on the first N only")
    e.add_argument("--device")
    e.add_argument("--dtype", default="auto")
    e.add_argument("--runs", default="runs", help="runs folder for a bare --out name")
    e.add_argument("--out", required=True, help="run name or folder")
    e.set_defaults(fn=cmd_extract)

    t = sub.add_parser("train", help="fine-tune a student")
    data_args(t)
    t.add_argument("--student", default=DEFAULT_STUDENT)
    t.add_argument("--mode", choices=["standard", "saliency", "dss", "hint"], default="standard")
    t.add_argument("--rationales", help="extraction run folder (saliency, hint)")
    t.add_argument("--alpha", type=float, default=0.5)
    t.add_argument("--steps", type=int)
    t.add_argument("--epochs", type=float)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--dev-limit", type=int, default=200)
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--out", required=True, help="run name (under $KDLENS_RUNS or ./runs) or folder")
    t.set_defaults(fn=cmd_train)

    v = sub.add_parser("eval", help="accuracy of a model or trained run")
    data_args(v)
    v.add_argument("--model", required=True, help="spec or run folder")
    v.add_argument("--split", choices=["all", "train", "dev"], default="all")
    v.add_argument("--mode", choices=["standard", "saliency", "dss", "hint"])
    v.add_argument("--with-rationales", help="extraction run: evaluate a hint student with them")
    v.add_argument("--batch-size", type=int, default=8)
    v.add_argument(
        "--predictions",
        help="per-example predictions file (JSONL); default: in "
        "the run folder, or the current folder for a model spec",
    )
    v.add_argument("--no-choices", action="store_true", help="skip option scoring")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_eval)

    c = sub.add_parser(
        "compare",
        help="table of finished runs; paired statistics for every pair on the same examples",
    )
    c.add_argument(
        "runs_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="training run folders (their dev_predictions.jsonl) or `distill eval` "
        "predictions files",
    )
    c.add_argument("--out", default=".", help="folder for comparison.csv/.md and pairs.csv/.md")
    c.add_argument(
        "--metric",
        choices=["correct", "choice_correct", "choice_correct_sum"],
        default="correct",
        help="per-example correctness compared: generation, or option ranking "
        "(length-normalised / summed)",
    )
    c.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.set_defaults(fn=cmd_compare)

    o = sub.add_parser("overlap", help="rationale vs ground-truth overlap, with random-k baselines")
    o.add_argument("--rationales", required=True, help="extraction run folder or JSONL file")
    o.add_argument("--task", choices=["cqa", "esnli", "anli1", "svamp"])
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--n-random", type=int, default=10)
    o.add_argument("--drop-stopwords", action="store_true")
    o.add_argument("--json", action="store_true")
    o.set_defaults(fn=cmd_overlap)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.fn, args, "; run the same command again to resume")
