"""Evaluate a student: batched greedy generation accuracy, choice-scoring accuracy, comparisons.

Prompts come from :func:`distill.features.example_source` (the formatting path of training),
so evaluation sees exactly what training fed the student. Generation accuracy is exact match
after normalisation (:func:`distill.metrics.score_answer`). For tasks with a closed answer set
the options are also ranked by their log-likelihood as the target, two ways, as
lm-evaluation-harness reports ``acc`` and ``acc_norm``: summed (``choice_accuracy_sum``;
favours short options) and divided by the option's length in characters (``choice_accuracy``,
the headline). Options are scored from one pass over the shared prompt
(:func:`option_logprobs`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from explain.formatting import answer_budget, encode_target, task_answers
from explain.lm_scoring import Scorer, collate
from explain.models import LoadedModel, load_model
from explain.pipeline import generate

from .choices import OptionRanking, _EvalMode, _length_batches, option_logprobs, rank_options
from .config import TrainError, recorded_settings
from .features import example_source
from .modes import MODES, get_mode
from .runs import RunDir


@dataclass
class EvalResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    choice_accuracy: float | None  # options ranked by length-normalised log-likelihood
    predictions: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    choice_accuracy_sum: float | None = None  # options ranked by summed log-likelihood

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Prediction:
    answer: str
    probability: float
    correct: bool | None
    choice: str | None = None  # the option ranked first by length-normalised likelihood
    choice_probs: dict[str, float] | None = None  # softmax over the options' summed log-likelihoods


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
    # A run folder's config.json is the run's (it has "kind"); a model folder's is the model's.
    cfg = run.config() if run.exists else {}
    if "kind" in cfg and "model_type" not in cfg:
        if not (run.model_dir / "config.json").is_file():
            raise TrainError(f"run {path.name!r} has no final model yet (model/ is missing)")
        chat = (cfg.get("settings") or {}).get("chat_template", True)
        return model_loader(str(run.model_dir), use_chat_template=chat), cfg
    return model_loader(str(model)), None


def prompt_ids(
    loaded: LoadedModel, example, mode: str, words, budget: int, marker: str = "cue"
) -> list[int]:
    """The student's inference prompt for ``example`` under ``mode`` (the one formatting
    path of training; ``marker``: the run's task_marker), fitted into ``budget`` tokens."""
    prefix, hint = get_mode(mode).inference(words, marker)
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
    from .tasks import get_task

    if example.options:
        return list(example.options)
    return get_task(task).options(example.fields)


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
    max_new_tokens: int | None = None,
    max_len: int = 256,
    choices: bool = True,
    model_loader: Callable[..., LoadedModel] = load_model,
    cap_from: list | None = None,
    marker: str | None = None,
) -> EvalResult:
    """Accuracy of greedy answers on ``examples`` (+ choice-scoring accuracy when ``choices``).

    ``model`` is a LoadedModel, a training run folder or a model spec. ``mode`` defaults to
    the run's mode (``standard`` otherwise). In ``hint`` mode, ``rationales`` (id -> words)
    adds hints; without them the student answers bare inputs. Without ``max_new_tokens`` the
    generation cap comes from the answers of ``cap_from`` (the training split, so that a test
    file's gold answers never shape generation), else of ``examples``. ``marker``: the
    multi-task format the student trained in (default: its run's, else ``"cue"``).
    """
    from .metrics import accuracy_ci, score_answer
    from .tasks import get_task

    loaded, run_cfg = resolve_model(model, model_loader)
    if mode is None:
        mode = ((run_cfg or {}).get("settings") or {}).get("mode", "standard")
    # A run answers in the format it was trained in (older runs: the "predict:" prefix).
    if marker is None:
        marker = recorded_settings(run_cfg)["task_marker"] if run_cfg else "cue"
    if mode not in MODES:
        raise TrainError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    examples = list(examples)[:limit] if limit is not None else list(examples)
    emit = progress or (lambda record: None)
    if max_new_tokens is None:  # the task's cap: its longest gold answer or option + a margin
        max_new_tokens = answer_budget(loaded, task_answers(cap_from or examples))

    sources = [
        prompt_ids(
            loaded, ex, mode, _words(rationales, ex, mode), max_len - max_new_tokens, marker
        )  # fmt: skip
        for ex in examples
    ]

    def gen_progress(done: int, total: int) -> None:
        emit({"stage": "generating", "step": done, "total": total})

    answer_ids = generate_answers(loaded, sources, max_new_tokens, batch_size, gen_progress)
    tok = loaded.tokenizer
    preds = [tok.decode(a, skip_special_tokens=True).strip() for a in answer_ids]

    spec = get_task(task)
    rankings: dict[int, OptionRanking] = {}
    if choices and "choice_accuracy" in spec.metrics:
        rankings = _rank_examples(loaded, task, examples, sources, batch_size, emit)

    records, correct, choice_norm, choice_sum = [], [], [], []
    for i, (ex, pred) in enumerate(zip(examples, preds)):
        ok = score_answer(spec, pred, ex)
        correct.append(ok)
        rec = {
            "id": ex.id,
            "prediction": pred,
            "gold": ex.label,
            "correct": ok,
            "choice_prediction": None,
            "choice_correct": None,
            "choice_prediction_sum": None,
            "choice_correct_sum": None,
        }
        if i in rankings:
            rk = rankings[i]
            norm, summed = rk.options[rk.best_norm], rk.options[rk.best_sum]
            rec["choice_prediction"] = norm
            rec["choice_correct"] = score_answer(spec, norm, ex)
            rec["choice_prediction_sum"] = summed
            rec["choice_correct_sum"] = score_answer(spec, summed, ex)
            rec["option_logprobs"] = dict(zip(rk.options, rk.sums))
            choice_norm.append(rec["choice_correct"])
            choice_sum.append(rec["choice_correct_sum"])
        records.append(rec)
    acc, lo, hi = accuracy_ci(correct)
    settings = {
        "model": loaded.spec,
        "task": task,
        "mode": mode,
        "n": len(examples),
        "hints": bool(get_mode(mode).uses_hints and rationales),
        "max_new_tokens": max_new_tokens,
        "max_len": max_len,
        "batch_size": batch_size,
        "chat_template": loaded.use_chat_template,
    }

    def mean(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return EvalResult(
        acc, lo, hi, len(examples), mean(choice_norm), records, settings, mean(choice_sum)
    )


def _rank_examples(loaded, task, examples, sources, batch_size, emit) -> dict[int, OptionRanking]:
    """Example index -> its options ranked by summed and length-normalised log-likelihood."""
    opts = [_options(task, ex) or [] for ex in examples]
    if not any(opts):
        return {}
    targets = [[encode_target(loaded, o, eos=False) for o in os_] for os_ in opts]
    total = len(examples)
    emit({"stage": "scoring options", "step": 0, "total": total})

    def opt_progress(done: int, n: int) -> None:
        emit({"stage": "scoring options", "step": done, "total": n})

    logps = option_logprobs(loaded, sources, targets, batch_size, opt_progress)
    return {i: rank_options(opts[i], logps[i]) for i in range(total) if opts[i]}


# ---------------------------------------------------------------------------------------------
# One input (the app's Compare tab)


def predict_one(
    loaded: LoadedModel,
    task: str,
    fields: dict,
    gold: str | None = None,
    mode: str = "standard",
    rationale_words: list[str] | None = None,
    max_new_tokens: int | None = None,
    max_len: int = 256,
    marker: str = "cue",
) -> Prediction:
    """Greedy answer for one input and its probability.

    Probability: for tasks with options, the softmax over the options' summed
    log-likelihoods of the option the answer names (else the top option by length-normalised
    log-likelihood, which is also ``choice``);
    otherwise exp of the mean token log-prob of the generated answer.
    """
    from .data import Example
    from .metrics import normalize, score_answer
    from .tasks import get_task

    spec = get_task(task)
    options = spec.options(fields)
    ex = Example(id="input", task=spec.name, fields=dict(fields), label=gold or "", options=options)
    if max_new_tokens is None:  # the options' length, or room for an expression
        max_new_tokens = answer_budget(loaded, options) if options else 32
    src = prompt_ids(loaded, ex, mode, rationale_words, max_len - max_new_tokens, marker)
    ans_ids = generate_answers(loaded, [src], max_new_tokens, 1)[0]
    answer = loaded.tokenizer.decode(ans_ids, skip_special_tokens=True).strip()
    correct = score_answer(spec, answer, ex) if gold else None
    if not options:
        if not ans_ids:
            return Prediction(answer, 0.0, correct)
        lp = target_logprobs(loaded, [src], [ans_ids])[0]
        return Prediction(answer, math.exp(sum(lp) / len(lp)), correct)
    targets = [encode_target(loaded, o, eos=False) for o in options]
    rk = rank_options(options, option_logprobs(loaded, [src], [targets])[0])
    probs = torch.softmax(torch.tensor(rk.sums, dtype=torch.float64), dim=0).tolist()
    named = spec.parse_answer(answer, options)
    norm_opts = [normalize(o) for o in options]
    top = rk.best_norm
    pick = norm_opts.index(named) if isinstance(named, str) and named in norm_opts else top
    return Prediction(
        answer, probs[pick], correct, options[top], {o: p for o, p in zip(options, probs)}
    )


__all__ = [
    "EvalResult",
    "Prediction",
    "evaluate",
    "generate_answers",
    "option_logprobs",
    "OptionRanking",
    "rank_options",
    "predict_one",
    "resolve_model",
    "target_logprobs",
]
