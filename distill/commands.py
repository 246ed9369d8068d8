"""The ``python -m distill`` commands: one function per subcommand, argparse in, exit code out.

The parser lives in :mod:`distill.cli`; these functions turn its arguments into library calls
(extraction, the experiment pipeline, training, evaluation, comparison, overlap) and print.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from explain.errors import KDLensError


def model_loader():
    """``load_model`` drawing tqdm bars on stderr for a pack's download, checksum, conversion
    and the load itself (the first use of a model can take minutes)."""
    import functools

    from explain.models import load_model
    from explain.progress import StageBars

    return functools.partial(load_model, progress=StageBars())


def _examples(args: argparse.Namespace):
    from .data import load_task, split

    examples = load_task(args.task, args.data, limit=args.limit)
    if getattr(args, "split", "all") == "all":
        return examples
    train, dev = split(examples, args.dev_size, args.seed)
    return train if args.split == "train" else dev


def _finite(text: str) -> float:
    """A float flag that refuses nan and inf (``--lr inf`` trained an all-inf model)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _dev_size(text: str) -> float | int:
    """A dev split as a count (``100``) or a fraction (``0.1``)."""
    try:
        value = float(text) if "." in text else int(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:  # "-1" read "leaves no training"
        raise argparse.ArgumentTypeError(
            f"expected a count (100) or a fraction (0.1), got {text!r}"
        ) from None
    return value


class StageBar:
    """One tqdm display for a whole job: the bar restarts per stage and shows the stage's
    name, items done/total, items/s and ETA."""

    def __init__(self, unit: str = "it") -> None:
        self.unit, self._bar = unit, None
        self.stage: str | None = None

    @property
    def bar(self):
        # Drawn at the first report: a plan refused before its first stage prints only the
        # error line, not an empty bar glued to it.
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=0, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        return self._bar

    def __call__(self, p: dict) -> None:
        # "[2/5] train saliency (seed 0): training": the part before ": " is the job's stage,
        # the rest the stage's own phase (shown beside the figures).
        outer, _, inner = str(p.get("stage") or self.stage or "").partition(": ")
        done = p.get("done", p.get("step"))
        total = p.get("total")
        restart = outer != self.stage or (done is not None and done < self.bar.n)
        if total is not None and (restart or total != self.bar.total):
            self.stage = outer
            self.bar.reset(total=total)  # items/s and ETA restart with the stage
            self.bar.set_description_str(outer)
        if done is not None and done >= self.bar.n:
            self.bar.update(done - self.bar.n)
        loss = "" if p.get("loss") is None else f"loss {p['loss']:.4f}"
        msg = p.get("message") or loss
        note = msg if inner and msg.startswith(inner) else " ".join(x for x in (inner, msg) if x)
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _bar(total: int, desc: str):
    bar = StageBar("ex")
    bar({"stage": desc, "done": 0, "total": total})
    return bar, bar


def run_out(args: argparse.Namespace) -> Path:
    """The run folder of extract/train: ``--out NAME`` inside the runs folder (``--runs``, else
    $KDLENS_RUNS or ./runs), or an explicit folder given with ``--out-dir PATH`` (issue 9: one
    rule for every command; a name never escapes the runs folder)."""
    from .runs import check_writable, runs_root, safe_run_dir

    if args.out_dir:
        out = Path(args.out_dir).expanduser().resolve()
        check_writable(out)
        return out
    if "/" in args.out or "\\" in args.out:
        raise KDLensError(
            f"--out takes a run name, got {args.out!r}; for a folder outside the runs folder "
            "use --out-dir PATH"
        )
    out = safe_run_dir(args.runs or runs_root(), args.out)
    check_writable(out)
    return out


def _check_limit(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise KDLensError(f"--limit must be at least 1, got {args.limit}")


def _method_settings(args: argparse.Namespace) -> dict | None:
    """Extraction's ``--steps``, checked like the explain CLI's (``--steps 0`` was ignored)."""
    from explain.cli import check_whole

    if args.steps is None:
        return None
    if args.method != "integrated_gradients":
        raise KDLensError("--steps applies to integrated_gradients only")
    check_whole(args.steps, "--steps")
    from explain.attr import get_method

    get_method(args.method, n_steps=args.steps)  # the method's own bounds
    return {"n_steps": args.steps}


def cmd_extract(args: argparse.Namespace) -> int:

    from explain.cli import check_device

    from .data import data_hash
    from .extract import extract, validate_settings
    from .runs import RunDir

    _check_limit(args)
    check_device(args.device)
    settings = _method_settings(args)
    out = run_out(args)
    examples = _examples(args)
    if not examples:
        raise KDLensError(f"no examples in the {args.split} split; nothing to extract")
    validate_settings(
        examples, args.task, args.method, args.top_k, args.target, args.batch_size,
        args.max_new_tokens, args.faithfulness_limit, args.rows,
    )  # fmt: skip
    run = RunDir(out)
    if not run.exists:
        run.check({})  # a folder that is not a run: refuse before loading the teacher
    teacher = model_loader()(args.teacher, device=args.device, dtype=args.dtype)
    bar, update = _bar(len(examples), "extract")
    try:
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
    finally:
        bar.close()  # an error prints on its own line, not glued to the bar
    print(json.dumps(summary, indent=2))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .pipeline import run_plan
    from .plan import make_plan

    plan = make_plan(
        args.task,
        args.out,
        preset=args.preset,
        data=args.data,
        test_data=args.test_data,
        test_limit=args.test_limit,
        teacher=args.teacher,
        student=args.student,
        modes=args.modes,
        seeds=args.seeds,
        train_size=args.train_size,
        dev_size=args.dev_size,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        top_k=args.top_k,
        method=args.method,
        target=args.target,
        extract_batch=args.extract_batch,
        eval_batch=args.eval_batch,
        max_new_tokens=args.max_new_tokens,
        faithfulness_limit=args.faithfulness_limit,
        zero_shot=False if args.no_zero_shot else None,
    )
    bar = StageBar()
    try:
        loader = model_loader()
        result = run_plan(plan, progress=bar, teacher_loader=loader, model_loader=loader)
    finally:
        bar.close()
    if result.status != "finished":
        print(f"stopped at {result.stage}; run the same command again to resume", file=sys.stderr)
        return 1
    print(Path(result.table_md).read_text(encoding="utf-8"))
    print(f"results: {result.table_md} and {result.table_json}", file=sys.stderr)
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .combine import combine

    md, js = combine(args.experiments, args.out)
    print(md.read_text(encoding="utf-8"))
    print(f"results: {md} and {js}", file=sys.stderr)
    return 0


# `distill train` flags that map one to one onto TrainConfig fields (None: not given).
RECIPE_FLAGS = ("epochs", "batch_size", "lr", "warmup", "schedule", "weight_decay", "max_len",
                "chat_template", "freeze_embeddings", "freeze_layers", "length_groups", "alpha",
                "grad_accum", "limit", "dev_size", "dev_limit", "task_marker")  # fmt: skip
# What a preset does not decide: the run's identity, where it goes and how often it reports.
_NOT_FROM_PRESET = {"student", "task", "data", "mode", "seed", "rationales", "llm_rationales",
                    "out", "steps", "eval_every", "save_every"}  # fmt: skip


def recipe_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields from ``distill train``'s flags. With ``--preset``, the base is the
    student the experiment trains for this task, mode and seed (its recipe, and the same
    records: read limit and dev split); flags given win, and ``--steps`` drops its epochs."""
    out: dict = {}
    if getattr(args, "preset", None):
        from .pipeline import train_config
        from .plan import make_plan

        plan = make_plan(args.task, "", args.preset, student=args.student, data=args.data)
        experiment = dataclasses.asdict(train_config(plan, args.mode, args.seed))
        out = {k: v for k, v in experiment.items() if k not in _NOT_FROM_PRESET}
        if args.steps:
            out["epochs"] = None
    out.update({k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None})
    bf16 = getattr(args, "bf16", None)
    if bf16 is not None:
        out["bf16"] = {"auto": "auto", "on": True, "off": False}[bf16]
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    _check_limit(args)
    cfg = TrainConfig(
        student=args.student,
        task=args.task,
        data=args.data,
        mode=args.mode,
        rationales=args.rationales,
        steps=args.steps,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        out=str(run_out(args)),  # absolute: TrainConfig takes it as the folder itself
        **recipe_settings(args),
    )

    def progress(p: dict) -> None:
        if "loss" in p or "dev_accuracy" in p:
            print(json.dumps(p), file=sys.stderr, flush=True)

    summary = train(cfg, progress=progress, model_loader=model_loader())
    print(json.dumps(summary, indent=2, default=str))
    return 0


def predictions_path(args: argparse.Namespace) -> Path:
    """--predictions, else beside a run folder's model, else in ``<runs>/predictions/`` named
    after the model spec (never the current folder: issue 9, one rule for every command)."""
    import re

    from .runs import runs_root

    if args.predictions:
        return Path(args.predictions)
    name = f"predictions-{args.task}-{args.split}{'-hint' if args.with_rationales else ''}"
    model = Path(args.model)
    if (model / "config.json").is_file() and (model / "summary.json").is_file():
        return model / f"{name}.jsonl"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name or str(args.model)).strip("-.") or "model"
    return runs_root() / "predictions" / f"{name}-{slug}.jsonl"


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
    from .rationales import check_hint_source, rationale_map

    _check_limit(args)
    if args.batch_size < 1:
        raise KDLensError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.predictions and Path(args.predictions).is_dir():
        raise KDLensError(f"--predictions {args.predictions!r} is a folder; give a file name")
    examples = _examples(args)
    if not examples:  # "accuracy 0.0000 n=0" was printed as a result
        raise KDLensError(f"no examples in the {args.split} split; nothing to evaluate")
    rationales = None
    if args.with_rationales:  # hints only from the teacher's own answers (never the gold)
        check_hint_source(args.with_rationales)
        rationales = rationale_map(args.with_rationales)
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
            model_loader=model_loader(),
        )
    finally:
        close()
    from .runs import atomic_write_text

    preds = predictions_path(args)
    preds.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(preds, "".join(json.dumps(p) + "\n" for p in result.predictions))
    print(f"predictions: {preds}", file=sys.stderr)
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
    from .compare import compare, compare_pairs, write_comparison

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # failed with FileExistsError after the work
        raise KDLensError(f"--out {args.out!r} is a file; give a folder for the comparison")
    if args.n_boot < 1:
        raise KDLensError(f"--n-boot must be at least 1, got {args.n_boot}")
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

    if args.n_random < 0:
        raise KDLensError(f"--n-random must not be negative, got {args.n_random}")
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
