"""The experiment: extract -> train each mode -> evaluate -> results table, in one place.

Used by ``python -m distill experiment``, by ``bench/distill_cqa.py`` and by the app's Distill
tab, so the three run the same sequence. A :class:`~distill.plan.Plan` (settings, presets and
validation live in :mod:`distill.plan`) fixes every setting up front;
:func:`run_plan` runs it in ``plan.out``::

    out/plan.json                      the plan (a rerun with another plan is refused)
    out/extract/                       teacher rationales (only when a mode needs them)
    out/extract-eval/                  the teacher's own-answer rationales of the evaluation
                                       examples (only for ``hint`` with a test file)
    out/train-<mode>-s<seed>/          one training run per mode and seed
    out/eval-<name>.json               test-file results of each model (with --test-data)
    out/results.md, out/results.json   the table

Resumable at every stage: each stage is a run folder; a finished one with the same settings is
reused, an unfinished one resumes, one with other settings is refused. Kill the job (or set
``stop``) and run the same plan again: it continues where it stopped.

Rationale target: experiments use the teacher's own answer (``generated``, the paper's method).
``gold`` stays available for analysis only and every table labels it "gold (analysis only)".
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from explain.models import LoadedModel, load_model

from .data import Example, data_hash, load_task, split
from .leaks import describe, repeats
from .modes import reads_rationales
from .plan import (
    NEEDS_RATIONALES,
    Plan,
    PlanError,
    validate,
)
from .rationales import target_label
from .runs import (
    RunDir,
    RunError,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    differences,
    read_json,
)

# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class ModelResult:
    """One evaluated model: a trained mode at one seed, or the zero-shot student."""

    name: str
    mode: str
    seed: int | None
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    choice_accuracy: float | None
    n: int | None
    eval_set: str
    run_dir: str | None = None
    predictions: str | None = None
    cached: bool = False
    hint_coverage: float | None = None  # hint mode: share of evaluated examples with a hint
    dev_accuracy: float | None = None  # a trained mode's final dev accuracy (its own split)
    train_seconds: float | None = None  # its training loop's time (dev evaluation included)


@dataclass
class PlanResult:
    status: str  # finished | stopped
    stage: str | None = None
    models: list[ModelResult] = field(default_factory=list)
    extraction: dict | None = None
    table_md: str | None = None
    table_json: str | None = None
    out: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def results_markdown(plan: Plan, models: list[ModelResult], eval_note: str) -> str:
    """The paper-style table: one row per model, mean accuracy over seeds, per-seed figures."""
    target = target_label(plan.target if plan.needs_rationales else None)
    lines = [
        f"# {plan.task}: student {plan.student}, teacher {plan.teacher}",
        "",
        f"- evaluation: {eval_note}",
        f"- rationale target: {target}" + ("" if plan.needs_rationales else " (no mode used one)"),
        f"- rationales: {plan.method}, top-{plan.top_k}; seeds {plan.seeds}",
        "",
        "| model | target | accuracy (mean over seeds) | per seed [95% CI] | choice accuracy | n "
        "| dev accuracy | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order: list[str] = []
    for r in models:
        if r.mode not in order:
            order.append(r.mode)
    for mode in order:
        rows = [r for r in models if r.mode == mode]
        per_seed = "; ".join(
            f"s{r.seed}: {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            if r.accuracy is not None and r.ci_low is not None
            else f"s{r.seed}: —"
            for r in rows
        )
        acc, choice = _mean([r.accuracy for r in rows]), _mean([r.choice_accuracy for r in rows])
        dev, secs = _mean([r.dev_accuracy for r in rows]), _mean([r.train_seconds for r in rows])
        row_target = target if mode in NEEDS_RATIONALES else "—"
        lines.append(
            f"| {rows[0].name.rsplit('-s', 1)[0]} | {row_target} | "
            f"{'—' if acc is None else f'{acc:.3f}'} | {per_seed} | "
            f"{'—' if choice is None else f'{choice:.3f}'} | {rows[0].n} | "
            f"{'—' if dev is None else f'{dev:.3f}'} | {'—' if secs is None else f'{secs:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def _runs(models: list[ModelResult]) -> dict[str, list[dict]]:
    from .runs import read_jsonl

    return {m.name: read_jsonl(m.predictions) for m in models
            if m.predictions and Path(m.predictions).is_file()}  # fmt: skip


def paired_comparisons(models: list[ModelResult], runs: dict | None = None) -> list:
    """Every pair of models evaluated on the same examples: accuracy difference, its paired
    bootstrap 95% interval and McNemar's exact p (:mod:`distill.stats`). ``runs``: the
    models' predictions when already read."""
    from .stats import pairwise

    return pairwise(_runs(models) if runs is None else runs)[0]


def shown_pairs(models: list[ModelResult], pairs: list) -> list:
    """The pairs the table shows: with several seeds, two modes at different seeds are left to
    ``results.json`` (the seed-averaged table compares modes); a mode against itself at
    another seed stays, as the measure of training noise."""
    by_name = {m.name: m for m in models}
    size: dict[str, int] = {}
    for m in models:
        size[m.mode] = size.get(m.mode, 0) + 1

    def keep(p) -> bool:
        a, b = by_name[p.model_a], by_name[p.model_b]
        return a.seed == b.seed or a.mode == b.mode or 1 in (size[a.mode], size[b.mode])

    return [p for p in pairs if keep(p)]


def pooled_comparisons(
    models: list[ModelResult], n_boot: int = 10_000, runs: dict | None = None
) -> list:
    """Every pair of modes on per-example correctness averaged over their seeds
    (:func:`distill.stats.seed_pooled`); empty unless some mode has several seeds."""
    import itertools

    from .stats import StatsError, correct_by_id, seed_pooled

    runs = _runs(models) if runs is None else runs
    groups: dict[str, list[dict[str, bool]]] = {}
    for m in models:
        if m.name in runs:
            groups.setdefault(m.mode, []).append(correct_by_id(runs[m.name], m.name, "correct"))
    if all(len(g) < 2 for g in groups.values()):
        return []
    out = []
    for (na, ga), (nb, gb) in itertools.combinations(groups.items(), 2):
        try:
            out.append(seed_pooled(ga, gb, na, nb, n_boot=n_boot))
        except StatsError:  # not scored on the same examples (dev splits differ by seed)
            continue
    return out


def pairs_markdown(pairs: list) -> str:
    if not pairs:
        return ""
    lines = ["", "Paired comparisons (same examples; difference = A - B):", "",
             "| A | B | n | A acc | B acc | difference | 95% paired bootstrap CI | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pairs:
        lines.append(f"| {p.model_a} | {p.model_b} | {p.n} | {p.accuracy_a:.3f} | "
                     f"{p.accuracy_b:.3f} | {p.difference:+.3f} | [{p.ci_low:+.3f}, "
                     f"{p.ci_high:+.3f}] | {p.mcnemar_p:.3g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def pooled_markdown(pooled: list) -> str:
    if not pooled:
        return ""
    lines = ["", "Seed-averaged comparisons (each example's correctness averaged over a mode's "
             "seeds; difference = A - B; the examples' interval and p, a paired sign-flip "
             "permutation test (Monte Carlo above 16 examples: 10,000 patterns, floor 2e-4), "
             "cover the test sample for these seeds; per seed: the difference at each seed; "
             "seeds agree: every seed's difference has the pooled sign; the seeds' interval "
             "resamples the seeds, then the examples, and the seeds' t-test tests the per-seed "
             "differences (k - 1 degrees of freedom): both ask about a new training seed):", "",
             "| A | B | n | seeds A/B | A acc | B acc | difference | 95% CI (examples) "
             "| p (examples) | per seed | seeds agree | 95% CI (seeds, examples) "
             "| t-test p (seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pooled:
        per = ", ".join(f"{d:+.3f}" for d in p.per_seed)
        ci = f"[{p.ci_low:+.3f}, {p.ci_high:+.3f}]"
        seed_ci = f"[{p.seed_ci_low:+.3f}, {p.seed_ci_high:+.3f}]"
        t_p = "—" if p.seed_t_p is None else f"{p.seed_t_p:.3g}"
        lines.append(f"| {p.model_a} | {p.model_b} | {p.n} | {p.seeds_a}/{p.seeds_b} | "
                     f"{p.accuracy_a:.3f} | {p.accuracy_b:.3f} | {p.difference:+.3f} | "
                     f"{ci} | {p.p_value:.3g} | {per} | {'yes' if p.seeds_agree else 'no'} | "
                     f"{seed_ci} | {t_p} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_results(
    plan: Plan, models: list[ModelResult], eval_note: str, extraction: dict | None,
    extra: dict | None = None, test_sha256: str | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """The table (``results.md``) and its data (``results.json``) in ``plan.out``."""
    runs = _runs(models)
    pairs, pooled = paired_comparisons(models, runs), pooled_comparisons(models, runs=runs)
    shown = shown_pairs(models, pairs)
    md = results_markdown(plan, models, eval_note) + pairs_markdown(shown)
    if len(shown) < len(pairs):
        md += (f"\n{len(pairs) - len(shown)} more pairs (two modes at different seeds) are in "
               "results.json.\n")  # fmt: skip
    md += pooled_markdown(pooled)
    if not pooled and max(Counter(m.mode for m in models).values(), default=0) > 1:
        md += ("\nEach seed was scored on its own dev split, so seeds cannot be paired: no "
               "seed-averaged comparison. A test file (`--test-data`) scores every seed on the "
               "same examples.\n")  # fmt: skip
    md_path, json_path = Path(plan.out) / "results.md", Path(plan.out) / "results.json"
    atomic_write_text(md_path, md)
    payload = {
        "plan": plan.to_dict(),
        "evaluation": eval_note,
        "test_sha256": test_sha256 or (data_hash(plan.test_data) if plan.test_data else None),
        "rationale_target": target_label(plan.target) if plan.needs_rationales else None,
        "extraction": extraction,
        "models": [asdict(m) for m in models],
        "paired": [p.to_dict() for p in pairs],
        "seed_pooled": [p.to_dict() for p in pooled],
        **(extra or {}),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(json_path, payload)
    return md_path, json_path


# ---------------------------------------------------------------------------------------------
# Running


Progress = Callable[[dict], None]


def _stage(progress: Progress, label: str) -> Progress:
    """Normalise a stage's progress records: ``stage``, ``done`` and ``total`` always set."""

    def emit(record: dict) -> None:
        rec = dict(record)
        rec.setdefault("message", "")
        if rec.get("done") is None and rec.get("step") is not None:
            rec["done"] = rec["step"]
        inner = rec.get("stage")
        rec["stage"] = f"{label}: {inner}" if inner and inner not in label else label
        progress(rec)

    return emit


def _load_splits(plan: Plan) -> dict[int, tuple[list[Example], list[Example]]]:
    """(train, dev) per seed: training splits its data with its own seed (TrainConfig.seed)."""
    examples = load_task(plan.task, plan.data, limit=plan.limit)
    return {s: split(examples, plan.dev_size, s) for s in plan.seeds}


def _check_plan_file(plan: Plan) -> None:
    old = read_json(Path(plan.out) / "plan.json")
    if old is None:
        return
    new = json.loads(json.dumps(plan.to_dict()))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise RunError(
            f"experiment folder {plan.out} holds another plan ({', '.join(diff)}); "
            "rerun with the same settings to resume, or choose another folder"
        )


def _extract_stage(plan, name, examples, target, teacher, progress, stop, cap_from) -> dict:
    from .extract import extract

    return extract(
        teacher,
        examples,
        plan.run_dir(name),
        task=plan.task,
        method=plan.method,
        top_k=plan.top_k,
        target=target,
        batch_size=plan.extract_batch,
        max_new_tokens=plan.max_new_tokens,
        with_faithfulness=bool(plan.faithfulness_limit),
        faithfulness_limit=plan.faithfulness_limit or None,
        seed=plan.seeds[0],
        explain_settings=plan.explain_settings or None,
        config={"data": plan.data, "data_hash": data_hash(plan.data)},
        progress=progress,
        stop=stop,
        cap_from=cap_from,
    )


def train_config(plan: Plan, mode: str, seed: int):
    """The TrainConfig of one mode and seed."""
    from .train import TrainConfig

    settings = dict(
        student=plan.student,
        task=plan.task,
        data=plan.data,
        mode=mode,
        rationales=str(plan.run_dir("extract"))
        if reads_rationales(mode, plan.needs_rationales)
        else None,
        steps=plan.steps,
        epochs=None if plan.steps else plan.epochs,
        batch_size=plan.batch_size,
        lr=plan.lr,
        seed=seed,
        dev_size=plan.dev_size,
        dev_limit=plan.dev_limit,
        limit=plan.limit,
        eval_every=0,
        save_every=25,
        max_new_tokens=plan.max_new_tokens,
        out=str(plan.run_dir(f"train-{mode}-s{seed}")),
    )
    # Further TrainConfig fields (e.g. eval_every, alpha, warmup) override the defaults above.
    return TrainConfig(**{**settings, **plan.train_settings})


def _train_stage(plan, mode, seed, progress, stop, model_loader) -> dict:
    """Train one mode at one seed; a finished run with the same settings is reused."""
    from .config import record_defaults
    from .train import train

    cfg = train_config(plan, mode, seed)
    run = RunDir(cfg.out)
    if run.is_finished:
        # The resume rule: a setting the run's record lacks reads as its default.
        diff = differences({"settings": run.config().get("settings") or {}},
                           {"settings": json.loads(json.dumps(asdict(cfg)))},
                           json.loads(json.dumps(record_defaults())))  # fmt: skip
        if diff:
            raise RunError(f"run {run.path} is finished with other settings "
                           f"({', '.join(diff)}); use another --out")  # fmt: skip
        return dict(run.summary() or {}, status="finished", cached=True)
    return train(cfg, progress=progress, stop=stop, model_loader=model_loader)


def _students_chat(plan: Plan) -> bool:
    return bool(plan.train_settings.get("chat_template", True))


def zero_shot_variants(plan: Plan) -> list[tuple[str, bool]]:
    """The untrained student's baselines as (name, chat template): the students' own prompt
    format, and, when they train without the chat template, the chat template too, so that
    the baseline to beat is the stronger of the two formats."""
    chat = _students_chat(plan)
    return [("zero-shot", chat)] + ([] if chat else [("zero-shot-chat", True)])


def _evaluate_stage(plan, name, model, mode, examples, rationales, eval_note, model_loader,
                    progress, cap_from, chat: bool | None = None):  # fmt: skip
    """Accuracy of ``model`` on ``examples``, saved as ``eval-<name>.json`` (reused if there).

    ``chat`` (a model spec only): wrap prompts in its chat template or not. Returns
    ``(None, False)`` for the ``zero-shot-chat`` baseline of a model without a chat template.
    """
    from .evaluate import evaluate

    path = Path(plan.out) / f"eval-{name}.json"
    from .extract import examples_hash

    # Everything that changes the result: reused only when all of it matches.
    hints = json.dumps(rationales or {}, sort_keys=True)
    key = {"model": str(model), "mode": mode, "eval": eval_note, "n": len(examples),
           "examples": examples_hash(examples), "cap_from": examples_hash(cap_from or []),
           "max_new_tokens": plan.max_new_tokens, "chat": chat,
           "hints": hashlib.sha256(hints.encode()).hexdigest()}  # fmt: skip
    cached = read_json(path)
    if cached and cached.get("key") == key:
        return cached["result"], True
    if not RunDir(model).is_finished:
        # A model spec or plain folder: load it here (a model folder's own config.json would
        # pass for a run folder's in resolve_model).
        model = model_loader(str(model), **({} if chat is None else {"use_chat_template": chat}))
        # The extra chat-template baseline of a model without one would repeat the first.
        if chat and not _students_chat(plan) and not model.has_chat_template:
            return None, False
    res = evaluate(
        model,
        plan.task,
        examples,
        mode=mode,
        rationales=rationales,
        batch_size=plan.eval_batch or plan.batch_size,
        max_new_tokens=plan.max_new_tokens,
        model_loader=model_loader,
        progress=progress,
        cap_from=cap_from,
    )
    preds = Path(plan.out) / f"predictions-{name}.jsonl"
    atomic_write_text(preds, "".join(json.dumps(p) + "\n" for p in res.predictions))
    result = {k: v for k, v in res.to_dict().items() if k != "predictions"}
    result["predictions"] = str(preds)
    if rationales is not None:
        covered = sum(bool(rationales.get(ex.id)) for ex in examples)
        result["hint_coverage"] = covered / len(examples) if examples else None
    atomic_write_json(path, {"key": key, "result": result})
    return result, False


def run_plan(
    plan: Plan,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    teacher_loader: Callable[[str], LoadedModel] | None = None,
    model_loader: Callable[..., LoadedModel] = load_model,
) -> PlanResult:
    """Run (or resume) the experiment ``plan``; returns what finished.

    ``teacher_loader(spec)`` gives the teacher (loaded only when an extraction must run);
    ``model_loader`` loads students (a fresh model per call: training changes it in place).
    ``stop`` set: the current stage checkpoints and the result says ``stopped``.
    """
    validate(plan)
    check_writable(plan.out)
    emit = progress or (lambda record: None)
    stop = stop or threading.Event()
    splits = _load_splits(plan)  # data errors before any folder exists
    test = None
    if plan.test_data:
        test = load_task(plan.task, plan.test_data, limit=plan.test_limit)
        pool = [e for tr, dev in splits.values() for e in tr + dev]
        found = repeats(test, pool)
        if found:
            raise PlanError(describe(found, len(test), plan.test_data, plan.data))
        eval_note = f"test file {plan.test_data} (sha256 {data_hash(plan.test_data)[:12]}…)"
    else:
        eval_note = "dev split of the data file (no --test-data given)"
    _check_plan_file(plan)
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(plan.out) / "plan.json", plan.to_dict())
    result = PlanResult(status="running", out=str(plan.out))

    modes = plan.modes
    n_stages = len(modes) * len(plan.seeds) + int(plan.needs_rationales)
    n_stages += int(plan.zero_shot) + (len(modes) * len(plan.seeds) if test else 0)
    n_stages += int(bool(test) and "hint" in modes)
    counter = iter(range(1, n_stages + 1))

    def label(text: str) -> str:
        return f"[{next(counter)}/{n_stages}] {text}"

    # Generation caps come from the training answers (never from a test file's gold).
    train0 = splits[plan.seeds[0]][0]
    if plan.needs_rationales:
        # Rationales for every training example of every seed; with hint, the dev examples
        # too (their hints at evaluation come from the teacher's own answer: target generated).
        want = {e.id for tr, _ in splits.values() for e in tr}
        if "hint" in modes:
            want |= {e.id for _, dev in splits.values() for e in dev}
        order = [e for e in load_task(plan.task, plan.data, limit=plan.limit) if e.id in want]
        teacher = (teacher_loader or load_model)(plan.teacher)
        st = label("extract rationales")
        emit({"stage": st, "done": 0, "total": len(order), "message": f"teacher {plan.teacher}"})
        summary = _extract_stage(plan, "extract", order, plan.target, teacher, _stage(emit, st),
                                 stop, train0)  # fmt: skip
        result.extraction = summary
        if test and "hint" in modes and summary.get("status") != "stopped":
            st = label("extract test hints")
            _extract_stage(plan, "extract-eval", test, "generated", teacher, _stage(emit, st),
                           stop, train0)  # fmt: skip
        del teacher
        if stop.is_set() or summary.get("status") == "stopped":
            return PlanResult(status="stopped", stage="extract", out=str(plan.out))

    if plan.zero_shot:
        st = label(f"zero-shot {plan.student}")
        for seed in plan.seeds[:1] if test else plan.seeds:
            dev = test if test else splits[seed][1][: plan.dev_limit]
            for name, chat in zero_shot_variants(plan):
                emit({"stage": st, "done": 0, "total": len(dev)})
                res, cached = _evaluate_stage(plan, f"{name}-s{seed}", plan.student, "standard",
                                              dev, None, eval_note, model_loader,
                                              _stage(emit, st), splits[seed][0],
                                              chat=chat)  # fmt: skip
                if res is not None:
                    result.models.append(_model_result(name, name, seed, res, eval_note, None,
                                                       cached))  # fmt: skip

    test_hints = None
    if test and "hint" in modes:
        from .rationales import check_hint_source, rationale_map

        check_hint_source(plan.run_dir("extract-eval"))
        test_hints = rationale_map(plan.run_dir("extract-eval"))

    for mode in modes:
        for seed in plan.seeds:
            st = label(f"train {mode} (seed {seed})")
            summary = _train_stage(plan, mode, seed, _stage(emit, st), stop, model_loader)
            if summary.get("status") == "stopped" or stop.is_set():
                return PlanResult(status="stopped", stage=f"train-{mode}-s{seed}",
                                  models=result.models, out=str(plan.out))  # fmt: skip
            run_dir = str(plan.run_dir(f"train-{mode}-s{seed}"))
            if test:
                st = label(f"evaluate {mode} (seed {seed})")
                emit({"stage": st, "done": 0, "total": len(test)})
                hints = test_hints if mode == "hint" else None
                res, cached = _evaluate_stage(plan, f"{mode}-s{seed}", run_dir, mode, test, hints,
                                              eval_note, model_loader, _stage(emit, st),
                                              splits[seed][0])  # fmt: skip
            else:
                res, cached = summary, bool(summary.get("cached"))
                res = dict(res, predictions=str(Path(run_dir) / "dev_predictions.jsonl"))
            model = _model_result(mode, mode, seed, res, eval_note, run_dir, cached)
            model.dev_accuracy = summary.get("accuracy")
            model.train_seconds = summary.get("elapsed_s")
            result.models.append(model)

    md_path, json_path = write_results(plan, result.models, eval_note, result.extraction)
    result.status, result.table_md, result.table_json = "finished", str(md_path), str(json_path)
    emit({"stage": "done", "message": f"results in {md_path}"})
    return result


def _model_result(name, mode, seed, res, eval_note, run_dir, cached) -> ModelResult:
    return ModelResult(
        name=f"{name}-s{seed}",
        mode=mode,
        seed=seed,
        accuracy=res.get("accuracy"),
        ci_low=res.get("ci_low"),
        ci_high=res.get("ci_high"),
        choice_accuracy=res.get("choice_accuracy"),
        n=res.get("n"),
        eval_set=eval_note,
        run_dir=run_dir,
        predictions=res.get("predictions"),
        cached=cached,
        hint_coverage=res.get("hint_coverage"),
    )


__all__ = [
    "ModelResult",
    "PlanResult",
    "results_markdown",
    "run_plan",
    "train_config",
]
