"""Evaluate a student: batched greedy generation accuracy, choice-scoring accuracy, comparisons.

Prompts come from :func:`distill.train.format_example`, so evaluation sees exactly what
training fed the student. Generation accuracy is exact match after normalisation
(:func:`distill.metrics.score_answer`). For tasks with a closed answer set the options are
also ranked by their log-likelihood as the target, two ways, as lm-evaluation-harness reports
``acc`` and ``acc_norm``: summed (``choice_accuracy_sum``; favours short options) and divided by
the option's length in characters (``choice_accuracy``, the headline). Options are scored from
one pass over the shared prompt (:func:`option_logprobs`).
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
from explain.models import LoadedModel, load_model
from explain.pipeline import generate

from .runs import RunDir, atomic_write_text
from .train import MODES, TrainError, encode_source, encode_target, format_example


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


def _fit(ids: list[int], budget: int) -> list[int]:
    """Keep the last ``budget`` prompt tokens (the question and cue are at the end)."""
    return ids[-max(budget, 1) :]


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


def _group_rows(idx: list[int], counts: list[int]) -> list[int]:
    """Row -> its question's position in the group, each question repeated per option."""
    return [k for k, n in zip(range(len(idx)), counts) for _ in range(n)]


def _picked(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def option_logprobs(
    loaded: LoadedModel,
    sources: list[list[int]],
    options: list[list[list[int]]],
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[list[float]]]:
    """Per question, per option: the option tokens' log-probabilities given the question's prompt.

    The prompt is run once per question, and all its options are scored from that pass: for
    decoder-only models from its key/value cache (repeated over the options), for
    encoder-decoders from its encoder states. Equal (to float rounding) to scoring each option
    after its own full prompt (:func:`target_logprobs`), with about 1/n_options of the work.
    ``batch_size`` counts questions per pass.
    """
    if any(len(o) == 0 for opts in options for o in opts):
        raise ValueError("every option needs at least one token")
    out: list[list[list[float]]] = [[] for _ in sources]
    pad = loaded.tokenizer.pad_token_id
    model, dev = loaded.model, loaded.device
    done = 0
    with _EvalMode(model):
        for group in _length_batches([len(s) for s in sources], batch_size):
            done += len(group)
            group = [i for i in group if options[i]]
            if not group:
                continue
            counts = [len(options[i]) for i in group]
            rows = _group_rows(group, counts)
            opts = [o for i in group for o in options[i]]
            batch = collate(
                [sources[i] for i in group],
                [[pad]] * len(group),  # the options follow below
                pad,
                left_pad_prompts=not loaded.is_encoder_decoder,
            )
            pids, pmask = batch.prompt_ids.to(dev), batch.prompt_mask.to(dev)
            optb = collate([[pad]] * len(opts), opts, pad, left_pad_prompts=False)
            oids, omask = optb.answer_ids.to(dev), optb.answer_mask.to(dev)
            sel = torch.tensor(rows, device=dev)
            if loaded.is_encoder_decoder:
                picked = _encdec_options(model, pids, pmask, oids, omask, sel)
            else:
                picked = _decoder_options(model, pids, pmask, oids, omask, sel)
            picked = picked.cpu()
            r = 0
            for i, n in zip(group, counts):
                out[i] = [picked[r + k, : len(options[i][k])].tolist() for k in range(n)]
                r += n
            if progress:
                progress(done, len(sources))
    return out


def _decoder_options(model, pids, pmask, oids, omask, sel) -> torch.Tensor:
    """Option-token log-probs [R, T]: one prompt pass with cache, then all options from it."""
    # Left padding: positions count real tokens only, as in an unpadded run.
    pos = (pmask.cumsum(-1) - 1).clamp(min=0)
    full = bool(pmask.all())
    first = model(
        input_ids=pids,
        attention_mask=None if full else pmask,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,  # only the last prompt position predicts the options' first token
    )
    cache = first.past_key_values
    cache.reorder_cache(sel)  # each question's cache repeated once per option
    plen = pmask.sum(-1)[sel]
    t = oids.shape[1]
    opos = plen[:, None] + torch.arange(t, device=oids.device)[None, :]
    mask = torch.cat([pmask[sel], omask], dim=1)
    # The last option position predicts nothing we score: keep the logits of the other T-1.
    rest = model(
        input_ids=oids,
        attention_mask=mask,
        position_ids=opos,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=t,
    ).logits[:, :-1]
    logits = torch.cat([first.logits[:, -1:][sel], rest], dim=1)
    return _picked(logits, oids) * omask


def _encdec_options(model, pids, pmask, oids, omask, sel) -> torch.Tensor:
    """Option-token log-probs [R, T]: the encoder once per question, the decoder per option."""
    enc = model.get_encoder()(input_ids=pids, attention_mask=pmask)
    enc.last_hidden_state = enc.last_hidden_state[sel]
    if hasattr(model, "_shift_right"):
        dec_in = model._shift_right(oids)
    else:
        start = model.config.decoder_start_token_id
        dec_in = torch.cat([torch.full_like(oids[:, :1], start), oids[:, :-1]], dim=1)
    logits = model(
        encoder_outputs=enc,
        attention_mask=pmask[sel],
        decoder_input_ids=dec_in,
        decoder_attention_mask=omask,
        use_cache=False,
    ).logits
    return _picked(logits, oids) * omask


@dataclass
class OptionRanking:
    """One question's options ranked by summed and by length-normalised log-likelihood."""

    options: list[str]
    sums: list[float]  # summed log-likelihood per option
    norms: list[float]  # summed log-likelihood / option length in characters (lm-eval acc_norm)

    @property
    def best_sum(self) -> int:
        return max(range(len(self.options)), key=lambda k: self.sums[k])

    @property
    def best_norm(self) -> int:
        return max(range(len(self.options)), key=lambda k: self.norms[k])


def rank_options(options: list[str], token_logprobs: list[list[float]]) -> OptionRanking:
    sums = [float(sum(lp)) for lp in token_logprobs]
    norms = [s / max(len(o), 1) for s, o in zip(sums, options)]
    return OptionRanking(list(options), sums, norms)


def _options(task: str, example) -> list[str] | None:
    from .tasks import get_task

    if example.options:
        return list(example.options)
    return get_task(task).options(example.fields)


def _words(rationales: dict | None, example, mode: str) -> list[str] | None:
    # Only the hint mode puts rationale words into the prompt at inference time.
    if mode != "hint" or not rationales:
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
    from .tasks import get_task

    loaded, run_cfg = resolve_model(model, model_loader)
    if mode is None:
        mode = ((run_cfg or {}).get("settings") or {}).get("mode", "standard")
    if mode not in MODES:
        raise TrainError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    examples = list(examples)[:limit] if limit is not None else list(examples)
    emit = progress or (lambda record: None)

    budget = max_len - max_new_tokens
    sources = []
    for ex in examples:
        src, _ = format_example(ex, mode, "predict", _words(rationales, ex, mode), loaded)
        sources.append(_fit(encode_source(loaded, src), budget))

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
        "hints": bool(mode == "hint" and rationales),
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
    max_new_tokens: int = 16,
    max_len: int = 256,
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
    words = rationale_words if mode == "hint" else None
    src_text, _ = format_example(ex, mode, "predict", words, loaded)
    src = _fit(encode_source(loaded, src_text), max_len - max_new_tokens)
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


PAIR_COLUMNS = [
    "model_a",
    "model_b",
    "n",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "ci_low",
    "ci_high",
    "mcnemar_p",
    "both_correct",
    "a_only",
    "b_only",
    "both_wrong",
]
RUN_PREDICTIONS = "dev_predictions.jsonl"  # a training run's per-example dev predictions


def _read_predictions(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def _mean_of(preds: list[dict], key: str) -> float | None:
    vals = [bool(p[key]) for p in preds if p.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _source_row(path: Path) -> tuple[dict, list[dict] | None]:
    """A comparison row and per-example predictions for a run folder or a predictions file."""
    from .metrics import accuracy_ci

    if path.is_file():  # a per-example predictions file written by ``distill eval``
        preds = _read_predictions(path)
        acc, lo, hi = accuracy_ci([bool(p.get("correct")) for p in preds])
        row = {c: None for c in COMPARE_COLUMNS} | {
            "run": str(path),
            "accuracy": acc,
            "ci_low": lo,
            "ci_high": hi,
            "ci": f"{lo:.3f}-{hi:.3f}",
            "choice_accuracy": _mean_of(preds, "choice_correct"),
            "n": len(preds),
            "settings": "{}",
        }
        return row, preds
    run = RunDir(path)
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
    row = {
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
    pred_file = run.path / RUN_PREDICTIONS
    return row, _read_predictions(pred_file) if pred_file.is_file() else None


def compare(run_dirs: list[str | Path]):
    """One row per finished training run (or ``distill eval`` predictions file): accuracy with
    its 95% interval and key settings."""
    import pandas as pd

    rows = [_source_row(Path(d))[0] for d in run_dirs]
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def compare_pairs(
    sources: list[str | Path], key: str = "correct", n_boot: int = 10_000, seed: int = 0
):
    """Every pair of runs / prediction files scored on the same examples: accuracy difference,
    its paired bootstrap 95% interval and McNemar's exact p (:mod:`distill.stats`).

    ``key`` picks the per-example correctness: ``correct`` (generation), ``choice_correct``
    (length-normalised option ranking) or ``choice_correct_sum``. Returns the table and the
    pairs skipped because their example sets differ.
    """
    import pandas as pd

    from .stats import pairwise

    named: dict[str, list[dict]] = {}
    for src in sources:
        row, preds = _source_row(Path(src))
        if preds is None:
            raise TrainError(
                f"run {row['run']!r} has no per-example predictions ({RUN_PREDICTIONS})"
            )
        name = row["run"] if row["run"] not in named else str(src)
        named[name] = preds
    pairs, skipped = pairwise(named, key=key, n_boot=n_boot, seed=seed)
    df = pd.DataFrame([p.to_dict() for p in pairs], columns=PAIR_COLUMNS)
    return df, skipped


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


def write_comparison(df, out_dir: str | Path, name: str = "comparison") -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, _markdown(df))
    return csv_path, md_path


__all__ = [
    "EvalResult",
    "Prediction",
    "compare",
    "compare_pairs",
    "evaluate",
    "generate_answers",
    "option_logprobs",
    "OptionRanking",
    "rank_options",
    "predict_one",
    "resolve_model",
    "target_logprobs",
    "write_comparison",
]
