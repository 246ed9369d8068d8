"""Evaluate a student: batched greedy generation accuracy, choice-scoring accuracy, comparisons.

Prompts come from :func:`distill.train.format_example`, so evaluation sees exactly what
training fed the student. Generation accuracy is exact match after normalisation
(:func:`distill.metrics.score_answer`); for tasks with a closed answer set the options are
also ranked by the summed log-likelihood of their text as the target (choice accuracy).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from explain.attr.scoring import Scorer, collate
from explain.formatting import encode_target
from explain.models import LoadedModel, load_model
from explain.pipeline import generate
from explain.templates import get_template

from .features import example_source
from .modes import MODES, get_mode
from .runs import RunDir, atomic_write_text
from .train import TrainError


@dataclass
class EvalResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    choice_accuracy: float | None
    predictions: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Prediction:
    answer: str
    probability: float
    correct: bool | None
    choice: str | None = None  # the option ranked first by likelihood (tasks with options)
    choice_probs: dict[str, float] | None = None


# ---------------------------------------------------------------------------------------------
# Model resolution


def resolve_model(
    model: LoadedModel | str | Path, model_loader: Callable[..., LoadedModel] = load_model
) -> tuple[LoadedModel, dict | None]:
    """A LoadedModel from itself, a training run folder (its ``model/``) or a model spec;
    plus the run's config when it is a run."""
    if isinstance(model, LoadedModel):
        return model, None
    path = Path(str(model)).expanduser()
    run = RunDir(path)
    if run.exists and (run.model_dir / "config.json").is_file():
        cfg = run.config()
        chat = (cfg.get("settings") or {}).get("chat_template", True)
        return model_loader(str(run.model_dir), use_chat_template=chat), cfg
    if run.exists:
        raise TrainError(f"run {path.name!r} has no final model yet (model/ is missing)")
    return model_loader(str(model)), None


# ---------------------------------------------------------------------------------------------
# Scoring primitives


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length (less padding), each group at most ``batch_size``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _EvalMode:
    """Put the model in eval mode (no dropout) and restore its training flag afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def prompt_ids(loaded: LoadedModel, example, mode: str, words, budget: int) -> list[int]:
    """The student's inference prompt for ``example`` under ``mode`` (the one formatting
    path of training), fitted into ``budget`` tokens."""
    prefix, hint = get_mode(mode).inference(words)
    return example_source(loaded, example, budget, prefix, hint).ids


def generate_answers(
    loaded: LoadedModel,
    sources: list[list[int]],
    max_new_tokens: int = 16,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Greedy answer ids per source (left padding for decoder-only, in length buckets)."""
    out: list[list[int] | None] = [None] * len(sources)
    done = 0
    with _EvalMode(loaded.model):
        for group in _length_batches([len(s) for s in sources], batch_size):
            for i, ans in zip(group, generate(loaded, [sources[i] for i in group], max_new_tokens)):
                out[i] = ans
            done += len(group)
            if progress:
                progress(done, len(sources))
    return out


@torch.no_grad()
def target_logprobs(
    loaded: LoadedModel, sources: list[list[int]], targets: list[list[int]], batch_size: int = 8
) -> list[list[float]]:
    """Per-token log-probabilities of each target given its source (teacher forcing)."""
    out: list[list[float] | None] = [None] * len(sources)
    lengths = [len(s) + len(t) for s, t in zip(sources, targets)]
    with _EvalMode(loaded.model):
        for group in _length_batches(lengths, batch_size):
            batch = collate(
                [sources[i] for i in group],
                [targets[i] for i in group],
                loaded.tokenizer.pad_token_id,
                left_pad_prompts=not loaded.is_encoder_decoder,
            )
            scorer = Scorer(loaded, batch)
            logp = scorer(scorer.prompt_embeds).float().cpu()
            for row, i in enumerate(group):
                out[i] = logp[row, : len(targets[i])].tolist()
    return out


def _options(task: str, example) -> list[str] | None:
    from .data import get_task

    if example.options:
        return list(example.options)
    return get_template(get_task(task).template).answer_options(example.fields)


def _words(rationales: dict | None, example, mode: str) -> list[str] | None:
    # Only modes that put rationale words into the prompt use them at inference time.
    if not get_mode(mode).uses_hints or not rationales:
        return None
    return rationales.get(example.id)


# ---------------------------------------------------------------------------------------------
# Dataset evaluation


def evaluate(
    model: LoadedModel | str | Path,
    task: str,
    examples: list,
    mode: str | None = None,
    rationales: dict | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    progress: Callable[[dict], None] | None = None,
    max_new_tokens: int = 16,
    max_len: int = 256,
    choices: bool = True,
    model_loader: Callable[..., LoadedModel] = load_model,
) -> EvalResult:
    """Accuracy of greedy answers on ``examples`` (+ choice-scoring accuracy when ``choices``).

    ``model`` is a LoadedModel, a training run folder or a model spec. ``mode`` defaults to
    the run's mode (``standard`` otherwise). In ``hint`` mode, ``rationales`` (id -> words)
    adds hints; without them the student answers bare inputs.
    """
    from .metrics import accuracy_ci, score_answer

    loaded, run_cfg = resolve_model(model, model_loader)
    if mode is None:
        mode = ((run_cfg or {}).get("settings") or {}).get("mode", "standard")
    if mode not in MODES:
        raise TrainError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    examples = list(examples)[:limit] if limit is not None else list(examples)
    emit = progress or (lambda record: None)

    sources = [
        prompt_ids(loaded, ex, mode, _words(rationales, ex, mode), max_len - max_new_tokens)
        for ex in examples
    ]

    def gen_progress(done: int, total: int) -> None:
        emit({"stage": "generating", "step": done, "total": total})

    answer_ids = generate_answers(loaded, sources, max_new_tokens, batch_size, gen_progress)
    tok = loaded.tokenizer
    preds = [tok.decode(a, skip_special_tokens=True).strip() for a in answer_ids]

    picks: dict[int, str] = {}
    if choices:
        picks = _choice_picks(loaded, task, examples, sources, batch_size, emit)

    records, correct, choice_correct = [], [], []
    for i, (ex, pred) in enumerate(zip(examples, preds)):
        ok = score_answer(task, pred, ex)
        correct.append(ok)
        rec = {
            "id": ex.id,
            "prediction": pred,
            "gold": ex.label,
            "correct": ok,
            "choice_prediction": None,
            "choice_correct": None,
        }
        if i in picks:
            rec["choice_prediction"] = picks[i]
            rec["choice_correct"] = score_answer(task, picks[i], ex)
            choice_correct.append(rec["choice_correct"])
        records.append(rec)
    acc, lo, hi = accuracy_ci(correct)
    settings = {
        "model": loaded.spec,
        "task": task,
        "mode": mode,
        "n": len(examples),
        "hints": bool(mode == "hint" and rationales),
        "max_new_tokens": max_new_tokens,
        "max_len": max_len,
        "batch_size": batch_size,
        "chat_template": loaded.use_chat_template,
    }
    choice_acc = sum(choice_correct) / len(choice_correct) if choice_correct else None
    return EvalResult(acc, lo, hi, len(examples), choice_acc, records, settings)


def _choice_picks(loaded, task, examples, sources, batch_size, emit) -> dict[int, str]:
    """Example index -> the option with the highest summed log-likelihood as the target."""
    pairs = []  # (example index, option)
    for i, ex in enumerate(examples):
        for opt in _options(task, ex) or []:
            pairs.append((i, opt))
    if not pairs:
        return {}
    emit({"stage": "scoring options", "step": 0, "total": len(pairs)})
    targets = [encode_target(loaded, opt, eos=False) for _, opt in pairs]
    logps = target_logprobs(loaded, [sources[i] for i, _ in pairs], targets, batch_size)
    best: dict[int, tuple[float, str]] = {}
    for (i, opt), lp in zip(pairs, logps):
        total = sum(lp)
        if i not in best or total > best[i][0]:
            best[i] = (total, opt)
    return {i: opt for i, (_, opt) in best.items()}


# ---------------------------------------------------------------------------------------------
# One input (the app's Compare tab)


def predict_one(
    loaded: LoadedModel,
    task: str,
    fields: dict,
    gold: str | None = None,
    mode: str = "standard",
    rationale_words: list[str] | None = None,
    max_new_tokens: int = 16,
    max_len: int = 256,
) -> Prediction:
    """Greedy answer for one input and its probability.

    Probability: for tasks with options, the softmax over the options' summed
    log-likelihoods of the option the answer names (the top option when it names none);
    otherwise exp of the mean token log-prob of the generated answer.
    """
    from .data import Example, get_task
    from .metrics import parse_choice, score_answer

    spec = get_task(task)
    options = get_template(spec.template).answer_options(fields)
    ex = Example(id="input", task=spec.name, fields=dict(fields), label=gold or "", options=options)
    src = prompt_ids(loaded, ex, mode, rationale_words, max_len - max_new_tokens)
    ans_ids = generate_answers(loaded, [src], max_new_tokens, 1)[0]
    answer = loaded.tokenizer.decode(ans_ids, skip_special_tokens=True).strip()
    correct = score_answer(spec, answer, ex) if gold else None
    if not options:
        if not ans_ids:
            return Prediction(answer, 0.0, correct)
        lp = target_logprobs(loaded, [src], [ans_ids])[0]
        return Prediction(answer, math.exp(sum(lp) / len(lp)), correct)
    targets = [encode_target(loaded, o, eos=False) for o in options]
    sums = [sum(lp) for lp in target_logprobs(loaded, [src] * len(options), targets)]
    probs = torch.softmax(torch.tensor(sums, dtype=torch.float64), dim=0).tolist()
    top = max(range(len(options)), key=lambda k: sums[k])
    named = parse_choice(answer, options)
    pick = named if named is not None else top
    return Prediction(
        answer, probs[pick], correct, options[top], {o: p for o, p in zip(options, probs)}
    )


# ---------------------------------------------------------------------------------------------
# Comparing runs


COMPARE_COLUMNS = [
    "run",
    "mode",
    "student",
    "task",
    "steps",
    "accuracy",
    "ci_low",
    "ci_high",
    "ci",
    "choice_accuracy",
    "n",
    "settings",
]
_KEY_SETTINGS = (
    "alpha",
    "lr",
    "batch_size",
    "grad_accum",
    "seed",
    "max_len",
    "dev_size",
    "limit",
    "rationales",
)


def compare(run_dirs: list[str | Path]):
    """One row per finished training run: accuracy with its 95% interval and key settings."""
    import pandas as pd

    rows = []
    for d in run_dirs:
        run = RunDir(d)
        summary = run.summary()
        if summary is None:
            raise TrainError(f"run {run.name!r} is not finished (no summary.json)")
        cfg = run.config()
        settings = cfg.get("settings") or summary.get("settings") or {}
        key = {k: settings.get(k) for k in _KEY_SETTINGS if k in settings}
        extraction = ((cfg.get("rationales") or {}).get("settings")) or None
        if extraction:
            key["extraction"] = extraction
        acc, lo, hi = summary.get("accuracy"), summary.get("ci_low"), summary.get("ci_high")
        rows.append(
            {
                "run": run.name,
                "mode": summary.get("mode", settings.get("mode")),
                "student": summary.get("student", settings.get("student")),
                "task": summary.get("task", settings.get("task")),
                "steps": summary.get("steps"),
                "accuracy": acc,
                "ci_low": lo,
                "ci_high": hi,
                "ci": f"{lo:.3f}-{hi:.3f}" if lo is not None and hi is not None else "",
                "choice_accuracy": summary.get("choice_accuracy"),
                "n": summary.get("n"),
                "settings": json.dumps(key, sort_keys=True, default=str),
            }
        )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _markdown(df) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(df, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, _markdown(df))
    return csv_path, md_path


__all__ = [
    "EvalResult",
    "Prediction",
    "compare",
    "evaluate",
    "generate_answers",
    "predict_one",
    "resolve_model",
    "target_logprobs",
    "write_comparison",
]
