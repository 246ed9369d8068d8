"""Explain answers: render prompts, generate (or take) answers, attribute, build results.

``explain_batch`` is the core (padding-aware, used for dataset extraction); ``explain`` is
a batch of one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .attr import get_method
from .errors import InputError
from .lm_scoring import Scorer, collate
from .models import LoadedModel
from .rationale import AGGREGATES
from .rationale import RATIONALE_DEFAULTS as _D
from .result import AttributionResult
from .templates import Prompt, apply_chat, get_template
from .words import merge_words, piece_aggregator, select_rationale

MAX_ANSWER_TOKENS = 512  # a given answer longer than this is refused before any model work
ANSWER_CUE = "\nAnswer:"  # appended for decoder-only models without a chat template


@dataclass
class Encoded:
    prompt: Prompt
    ids: list[int]
    offsets: list[tuple[int, int] | None]
    special: list[bool]
    warnings: list[str] = field(default_factory=list)


def build_prompt(loaded: LoadedModel, template: str, fields: dict) -> Prompt:
    """Render task fields; wrap in the chat template when the model has one and it is on."""
    prompt = get_template(template).render(fields)
    if loaded.use_chat_template and loaded.has_chat_template and not loaded.is_encoder_decoder:
        return apply_chat(prompt, loaded.tokenizer)
    if not loaded.is_encoder_decoder:
        return Prompt(prompt.text + ANSWER_CUE, prompt.input_spans, prompt.template, prompt.fields)
    return prompt


def _offsets_slow(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Offsets for tokenizers without a fast backend: align decoded pieces to the text."""
    out, pos = [], 0
    for tid in ids:
        piece = tokenizer.decode([tid])
        at = text.find(piece, pos) if piece else -1
        if at < 0 or not piece.strip():
            out.append(None if at < 0 else (at, at + len(piece)))
            continue
        out.append((at, at + len(piece)))
        pos = at + len(piece)
    return out


def encode_prompt(loaded: LoadedModel, prompt: Prompt, reserve: int) -> Encoded:
    """Token ids, char offsets and special-token flags; left-truncated to fit the context."""
    tok = loaded.tokenizer
    add_special = not prompt.chat  # a chat template already holds its special tokens as text
    if getattr(tok, "is_fast", False):
        enc = tok(prompt.text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    else:
        ids = list(tok(prompt.text, add_special_tokens=add_special)["input_ids"])
        offsets = _offsets_slow(tok, prompt.text, ids)
    special_ids = set(getattr(tok, "all_special_ids", []) or [])
    special = [i in special_ids for i in ids]
    offsets = [None if s else o for o, s in zip(offsets, special)]
    warnings = []
    budget = loaded.max_length - reserve
    if len(ids) > budget:
        if budget < 1:
            raise InputError(f"the answer alone fills the context of {loaded.max_length} tokens")
        warnings.append(
            f"input truncated: kept the last {budget} of {len(ids)} prompt tokens "
            f"(context {loaded.max_length}, {reserve} reserved for the answer)"
        )
        ids, offsets, special = ids[-budget:], offsets[-budget:], special[-budget:]
    return Encoded(prompt, ids, offsets, special, warnings)


def encode_answer(loaded: LoadedModel, prompt: Prompt, answer: str) -> list[int]:
    answer = answer.strip()
    if not answer:
        raise InputError("the given answer is empty")
    if not loaded.is_encoder_decoder and not prompt.chat:
        answer = " " + answer  # follows "Answer:" as a generated answer would
    ids = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
    return list(ids)


@torch.no_grad()
def generate(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers (no EOS, no padding), batched."""
    tok, model, dev = loaded.tokenizer, loaded.model, loaded.device
    batch = collate(
        prompts,
        [[0]] * len(prompts),
        tok.pad_token_id,
        left_pad_prompts=not loaded.is_encoder_decoder,
    )
    out = model.generate(
        input_ids=batch.prompt_ids.to(dev),
        attention_mask=batch.prompt_mask.to(dev),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    if not loaded.is_encoder_decoder:
        out = out[:, batch.prompt_ids.shape[1] :]
    stop = {tok.eos_token_id, tok.pad_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    start = getattr(model.config, "decoder_start_token_id", None)
    answers = []
    for row in out.tolist():
        if loaded.is_encoder_decoder and row and row[0] == start:
            row = row[1:]
        ans = []
        for t in row:
            if t in stop:
                break
            ans.append(t)
        answers.append(ans)
    return answers


def aggregate(matrix: torch.Tensor, how: str) -> torch.Tensor:
    """Output rows [T, Lp] -> per-input-token scores [Lp]."""
    if how == "mean":
        return matrix.mean(dim=0)
    if how == "sum":
        return matrix.sum(dim=0)
    if how == "max":
        return matrix.max(dim=0).values
    if how == "abs_mean":
        return matrix.abs().mean(dim=0)
    raise InputError(f"unknown aggregate {how!r}; use one of {', '.join(AGGREGATES)}")


def explain_batch(
    loaded: LoadedModel,
    items: list[dict],
    template: str = "free",
    method: str = _D.method,
    top_k: int = _D.top_k,
    answers: list[str | None] | None = None,
    max_new_tokens: int = 32,
    how: str = _D.aggregate,
    method_settings: dict | None = None,
    rows: str = _D.rows,
    piece_aggregation: str = _D.piece_aggregation,
) -> list[AttributionResult]:
    """Explain a batch of task inputs (one padded forward/backward for the whole batch).

    Defaults are :data:`explain.rationale.RATIONALE_DEFAULTS`, shared by the app, the CLI and
    extraction. ``rows="tokens"`` gives one matrix row per answer token; ``rows="answer"`` one
    row for the whole answer's log-prob: the same token scores as ``how="sum"`` for the linear
    methods, at the cost of a single backward pass.
    """
    if not items:
        return []
    if top_k < 1:
        raise InputError("top-k must be at least 1")
    if how not in AGGREGATES:
        raise InputError(f"unknown aggregate {how!r}; use one of {', '.join(AGGREGATES)}")
    piece_aggregator(piece_aggregation)  # unknown names fail before any model work
    attributor = get_method(method, **(method_settings or {}))
    t0 = time.perf_counter()
    answers = list(answers) if answers is not None else [None] * len(items)
    prompts = [build_prompt(loaded, template, f) for f in items]
    given = [encode_answer(loaded, p, a) if a else None for p, a in zip(prompts, answers)]
    for g in given:
        if g and len(g) > MAX_ANSWER_TOKENS:
            raise InputError(
                f"the given answer has {len(g)} tokens; the limit is {MAX_ANSWER_TOKENS} tokens"
            )
    reserve = [len(g) if g else max_new_tokens for g in given]
    enc = [encode_prompt(loaded, p, r) for p, r in zip(prompts, reserve)]
    todo = [i for i, g in enumerate(given) if g is None]
    if todo:
        generated = generate(loaded, [enc[i].ids for i in todo], max_new_tokens)
        for i, g in zip(todo, generated):
            given[i] = g
    for i, g in enumerate(given):
        if not g:  # the model answered with EOS at once: attribute its EOS
            given[i] = [loaded.tokenizer.eos_token_id]
            enc[i].warnings.append("the model generated an empty answer; attributing its end token")
    batch = collate(
        [e.ids for e in enc],
        given,
        loaded.tokenizer.pad_token_id,
        left_pad_prompts=not loaded.is_encoder_decoder,
    )
    scorer = Scorer(loaded, batch, rows=rows)
    out = attributor.attribute(scorer)
    seconds = (time.perf_counter() - t0) / len(items)
    lp = batch.prompt_ids.shape[1]
    settings = {
        "top_k": top_k,
        "aggregate": how,
        "rows": rows,
        "piece_aggregation": piece_aggregation,
        "max_new_tokens": max_new_tokens,
        "chat_template": prompts[0].chat,
        **attributor.settings,
    }
    results = []
    for b, (e, ans_ids) in enumerate(zip(enc, given)):
        n, t = len(e.ids), (1 if rows == "answer" else len(ans_ids))
        sl = slice(lp - n, lp) if not loaded.is_encoder_decoder else slice(0, n)
        matrix = out.matrix[b, :t, sl].detach().float().cpu()
        scores = aggregate(matrix, how)
        words = merge_words(
            e.prompt.text,
            e.offsets,
            scores.tolist(),
            e.special,
            e.prompt.input_spans,
            piece_aggregation,
        )
        tok = loaded.tokenizer
        extras = {
            k: (v[b] if isinstance(v, list) and len(v) == len(items) else v)
            for k, v in out.extras.items()
        }
        results.append(
            AttributionResult(
                prompt=e.prompt.text,
                answer=tok.decode(ans_ids, skip_special_tokens=True).strip(),
                method=method,
                model=loaded.spec,
                template=template,
                input_tokens=[
                    e.prompt.text[o[0] : o[1]] if o else tok.decode([i])
                    for i, o in zip(e.ids, e.offsets)
                ],
                input_offsets=[list(o) if o else None for o in e.offsets],
                output_tokens=[tok.decode(ans_ids).strip()]
                if rows == "answer"
                else [tok.decode([i]) for i in ans_ids],
                matrix=matrix.tolist(),
                token_scores=scores.tolist(),
                words=words,
                rationale=select_rationale(words, top_k),
                input_spans=[list(s) for s in e.prompt.input_spans],
                fields=e.prompt.fields,
                input_ids=list(e.ids),
                output_ids=list(ans_ids),
                target="given" if answers[b] else "generated",
                settings=dict(settings, model=loaded.describe()),
                extras=extras,
                warnings=list(e.warnings),
                seconds=round(seconds, 4),
            )
        )
    return results


def explain(
    loaded: LoadedModel,
    fields: dict,
    template: str = "free",
    method: str = _D.method,
    top_k: int = _D.top_k,
    answer: str | None = None,
    **kwargs,
) -> AttributionResult:
    """Explain one task input; see :func:`explain_batch` for the settings."""
    return explain_batch(loaded, [fields], template, method, top_k, [answer], **kwargs)[0]
