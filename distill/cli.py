"""``python -m distill``: extract rationales, train students, evaluate, compare, analyse overlap.

Under ``accelerate launch -m distill extract ...`` the extraction shards across processes.
"""

from __future__ import annotations

import argparse

from explain.cli import DTYPES
from explain.errors import OneLineParser, run_cli
from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER
from explain.rationale import RATIONALE_DEFAULTS

from .commands import (
    _dev_size,
    _finite,
    cmd_combine,
    cmd_compare,
    cmd_eval,
    cmd_experiment,
    cmd_extract,
    cmd_overlap,
    cmd_train,
)
from .modes import mode_names
from .plan import PRESETS
from .tasks import task_names


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m distill", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(sp, need_data=True):
        sp.add_argument("--task", required=True, choices=task_names())
        sp.add_argument("--data", required=need_data, help="JSONL/CSV file")
        sp.add_argument("--limit", type=int, help="read at most N records")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--dev-size", type=_dev_size, default=0.1, help="fraction or count")

    def out_args(sp):
        sp.add_argument("--runs", help="runs folder (default $KDLENS_RUNS or ./runs)")
        where = sp.add_mutually_exclusive_group(required=True)
        where.add_argument("--out", help="run name, a folder inside the runs folder")
        where.add_argument("--out-dir", help="an explicit run folder anywhere")

    e = sub.add_parser("extract", help="teacher rationales over a dataset")
    data_args(e)
    e.add_argument("--teacher", default=DEFAULT_TEACHER)
    e.add_argument("--split", choices=["all", "train", "dev"], default="all")
    e.add_argument("--method", default="saliency")
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--target", choices=["generated", "gold"], default="generated")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--max-new-tokens", type=int, help="generation cap (default: the task's "
                   "longest gold answer + 8 tokens)")  # fmt: skip
    e.add_argument("--steps", type=int, help="integrated_gradients steps")
    e.add_argument(
        "--rows",
        choices=["answer", "tokens"],
        default=RATIONALE_DEFAULTS.rows,
        help="attribute each answer token (default, as the app) or the whole answer at once",
    )
    e.add_argument("--no-faithfulness", action="store_true")
    e.add_argument("--faithfulness-limit", type=int, help="ERASER figures on the first N only")
    e.add_argument("--device")
    e.add_argument("--dtype", default="auto", choices=DTYPES)
    out_args(e)
    e.set_defaults(fn=cmd_extract)

    x = sub.add_parser(
        "experiment",
        aliases=["run"],
        help="extract -> train every mode -> evaluate -> results table (resumable)",
    )
    x.add_argument("--task", required=True, choices=task_names())
    x.add_argument("--preset", choices=list(PRESETS), help="sizes (distill/plan.py PRESETS)")
    x.add_argument("--data", help="training data file; default: the task's bundled file")
    x.add_argument("--test-data", help="final accuracy on this file (never trained on)")
    x.add_argument("--test-limit", type=int)
    x.add_argument("--teacher")
    x.add_argument("--student")
    x.add_argument("--modes", nargs="+", help="training modes; default standard saliency dss")
    x.add_argument("--seeds", nargs="+", type=int)
    x.add_argument("--train-size", type=int, help="training examples")
    x.add_argument("--dev-size", type=int, help="dev examples carved from the data file")
    x.add_argument("--steps", type=int)
    x.add_argument("--epochs", type=_finite)
    x.add_argument("--batch-size", type=int)
    x.add_argument("--lr", type=_finite)
    x.add_argument("--top-k", type=int)
    x.add_argument("--method")
    x.add_argument(
        "--target",
        choices=["generated", "gold"],
        help="rationale target: the teacher's own answer (default) or gold (analysis only)",
    )
    x.add_argument("--extract-batch", type=int)
    x.add_argument("--eval-batch", type=int, help="evaluation batch (default: --batch-size)")
    x.add_argument("--max-new-tokens", type=int)
    x.add_argument("--faithfulness-limit", type=int)
    x.add_argument("--no-zero-shot", action="store_true", help="skip the untrained student")
    x.add_argument("--out", required=True, help="experiment folder")
    x.set_defaults(fn=cmd_experiment)

    cb = sub.add_parser(
        "combine",
        help="one table from finished experiments that differ only in their seeds",
    )
    cb.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR")
    cb.add_argument("--out", required=True, help="folder for the combined results.md/.json")
    cb.set_defaults(fn=cmd_combine)

    t = sub.add_parser("train", help="fine-tune a student")
    data_args(t)
    t.set_defaults(dev_size=None)  # TrainConfig's 0.1, or the preset's
    t.add_argument("--student", default=DEFAULT_STUDENT)
    t.add_argument("--mode", choices=mode_names(), default="standard")
    t.add_argument("--rationales", help="extraction run folder (saliency, hint)")
    t.add_argument("--alpha", type=_finite, help="label-loss weight of multi-task modes (0.5)")
    t.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="the student the experiment trains at this preset, as defaults: its recipe "
        "(distill/plan.py) and records (--limit, --dev-size, --dev-limit); flags given win",
    )
    t.add_argument("--steps", type=int)
    t.add_argument("--epochs", type=_finite, help="default 1, or the preset's")
    t.add_argument("--batch-size", type=int, help="default 8, or the preset's")
    t.add_argument("--grad-accum", type=int, help="micro-batches per step (1)")
    t.add_argument("--lr", type=_finite, help="default 5e-5, or the preset's")
    t.add_argument("--warmup", type=int, help="linear warm-up steps (default 0)")
    t.add_argument("--schedule", choices=["linear", "constant"], help="after warm-up (linear)")
    t.add_argument("--weight-decay", type=_finite)
    t.add_argument("--max-len", type=int, help="tokens per training sequence (default 256)")
    t.add_argument("--bf16", choices=["auto", "on", "off"], help="mixed precision (auto: GPUs)")
    t.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        help="wrap prompts in the student's chat template (default on)",
    )
    t.add_argument(
        "--freeze-embeddings",
        action=argparse.BooleanOptionalAction,
        help="keep the token embeddings (and a head tied to them) fixed",
    )
    t.add_argument(
        "--freeze-layers",
        type=int,
        help="also keep the lowest N transformer blocks fixed (cheaper backward)",
    )
    t.add_argument("--length-groups", type=int, help="batch by length within runs of N")
    t.add_argument(
        "--task-marker",
        choices=["cue", "prefix"],
        help="multi-task modes: tell the tasks apart by the prompt's last line (cue, default: "
        "the prompt is shared and read once) or by predict:/explain: before the input",
    )
    t.add_argument("--dev-limit", type=int, help="dev examples evaluated (200, or the preset's)")
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--save-every", type=int, default=50)
    out_args(t)
    t.set_defaults(fn=cmd_train)

    v = sub.add_parser("eval", help="accuracy of a model or trained run")
    data_args(v)
    v.add_argument("--model", required=True, help="spec or run folder")
    v.add_argument("--split", choices=["all", "train", "dev"], default="all")
    v.add_argument("--mode", choices=mode_names())
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
    o.add_argument("--task", choices=task_names())
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--n-random", type=int, default=10)
    o.add_argument("--drop-stopwords", action="store_true")
    o.add_argument("--json", action="store_true")
    o.set_defaults(fn=cmd_overlap)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.fn, args, "; run the same command again to resume")
