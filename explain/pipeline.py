"""Explain answers: render prompts, generate (or take) answers, attribute, build results.

``explain_batch`` is the core (padding-aware, used for dataset extraction); ``explain`` is
a batch of one.
"""

from __future__ import annotations

import functools
import time

import torch

from .attr import get_method
from .errors import InputError
from .formatting import Source, build_source, encode_target, render_prompt
from .limits import heatmap_rows
from .lm_scoring import Scorer, ScoringBatch, collate
from .models import LoadedModel
from .rationale import AGGREGATES
from .rationale import RATIONALE_DEFAULTS as _D
from .result import AttributionResult
from .templates import Prompt, get_template
from .words import merge_words, piece_aggregator, select_rationale

MAX_ANSWER_TOKENS = 512  # a given answer longer than this is refused before any model work
LEAD_CHARS = 16  # text allowed before an answer span ("Answer: (b) ") before it is dropped


def build_prompt(loaded: LoadedModel, template: str, fields: dict) -> Prompt:
    """Render task fields for ``loaded`` (chat template or answer cue): see explain.formatting."""
    return render_prompt(loaded, template, fields)


def encode_prompt(loaded: LoadedModel, prompt: Prompt, reserve: int) -> Source:
    """Tokens of a rendered prompt, fitted to the context minus ``reserve`` answer tokens."""
    budget = loaded.max_length - reserve
    if budget < 1:
        raise InputError(f"the answer alone fills the context of {loaded.max_length} tokens")
    return build_source(loaded, prompt.template, prompt.fields, budget)


def encode_answer(loaded: LoadedModel, prompt: Prompt, answer: str) -> list[int]:
    answer = answer.strip()
    if not answer:
        raise InputError("the given answer is empty")
    return encode_target(loaded, answer, eos=False)


def _stop_ids(loaded: LoadedModel) -> set[int]:
    tok, model = loaded.tokenizer, loaded.model
    stop = {tok.eos_token_id, tok.pad_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {s for s in stop if s is not None}


def _first_line(tok, ids: list[int]) -> list[int]:
    """Tokens up to the first line break that follows some text (answers come first)."""
    seen_text = False
    for j, t in enumerate(ids):
        piece = tok.decode([t])
        if "\n" in piece and seen_text:
            return ids[:j]
        seen_text = seen_text or bool(piece.strip())
    return ids


@functools.lru_cache(maxsize=8)
def line_stop(tokenizer):
    """The end-of-line stop of ``tokenizer``, built once: transformers' ``StopStringCriteria``
    scans the whole vocabulary when built (1.5 s for Qwen's 152k tokens, on every ``generate``
    call when passed as ``stop_strings``) and keeps no state between calls."""
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer, ["\n"])


@torch.no_grad()
def generate(
    loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int, first_line: bool = True
) -> list[list[int]]:
    """Greedy answers (no EOS, no padding), batched; rows stop at EOS, and at the end of their
    first line when ``first_line`` (prompts ask for the answer first, in a fixed form)."""
    if max_new_tokens < 1:
        raise InputError(f"max new tokens must be at least 1, got {max_new_tokens}")
    tok, model, dev = loaded.tokenizer, loaded.model, loaded.device
    batch = collate(
        prompts,
        [[0]] * len(prompts),
        tok.pad_token_id,
        left_pad_prompts=not loaded.is_encoder_decoder,
    )
    from transformers import StoppingCriteriaList

    extra = {"stopping_criteria": StoppingCriteriaList([line_stop(tok)])} if first_line else {}
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
        **extra,
    )
    if not loaded.is_encoder_decoder:
        out = out[:, batch.prompt_ids.shape[1] :]
    stop = _stop_ids(loaded)
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
        answers.append(_first_line(tok, ans) if first_line else ans)
    return answers


def answer_target(
    loaded: LoadedModel, template: str, fields: dict, ids: list[int]
) -> tuple[list[int], list[str]]:
    """The generated tokens to attribute: the answer span only, never a preamble.

    The answer (``Template.answer_span``) is kept with what precedes it when that is a short
    lead such as "(b) "; after a longer preamble the answer's text alone is the target. An answer
    in no expected form is attributed whole, with a warning.
    """
    tok = loaded.tokenizer
    text = tok.decode(ids, skip_special_tokens=True)
    span = get_template(template).answer_span(text, fields) if ids else None
    if span is None:
        return ids, ([f"no {template} answer found in {text.strip()!r}"] if ids else [])
    start, end = span
    if start > LEAD_CHARS:
        answer = text[start:end]
        return encode_target(loaded, answer, eos=False), [
            f"the answer came after other text; attributing {answer!r} alone"
        ]
    for j in range(1, len(ids) + 1):  # the shortest token prefix that covers the span
        if len(tok.decode(ids[:j], skip_special_tokens=True)) >= end:
            return ids[:j], []
    return ids, []


def first_rows(batch: ScoringBatch, n: int) -> ScoringBatch:
    """``batch`` with its answers cut to their first ``n`` tokens. The scored models are
    causal in the answer, so each kept token's log-prob (and its attribution) is the same as
    in the whole answer."""
    return ScoringBatch(batch.prompt_ids, batch.prompt_mask, batch.answer_ids[:, :n],
                        batch.answer_mask[:, :n])  # fmt: skip


def heatmap_note(rows: int, n_tokens: int) -> str:
    """The warning of a result whose per-token heatmap shows only the first rows."""
    return (
        f"the per-token heatmap shows the first {rows} of the answer's "
        f"{n_tokens} tokens (each row costs a backward pass over the whole input); the word "
        "scores and the rationale use the whole answer"
    )


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
    token_matrix: bool = False,
) -> list[AttributionResult]:
    """Explain a batch of task inputs (one padded forward/backward for the whole batch).

    Defaults are :data:`explain.rationale.RATIONALE_DEFAULTS`, shared by the app, the CLI and
    extraction. Word scores and the rationale come from the attribution of ``rows="answer"``:
    the whole answer's log-prob, one backward pass (DESIGN section 1), or ``rows="tokens"``:
    one row per answer token, folded by ``how``. ``token_matrix`` also computes the per-token
    rows for display (the app's heatmap) without changing the word scores or the rationale.
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
    attributor.check_input_tokens(max(len(e.ids) for e in enc))
    todo = [i for i, g in enumerate(given) if g is None]
    if todo:
        generated = generate(loaded, [enc[i].ids for i in todo], max_new_tokens)
        for i, g in zip(todo, generated):
            given[i], notes = answer_target(loaded, template, enc[i].prompt.fields, g)
            enc[i].warnings.extend(notes)
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
    out = attributor.attribute(Scorer(loaded, batch, rows=rows))
    shown = out  # the matrix the result carries
    if token_matrix and rows == "answer":
        # The heatmap's rows, within a budget of rows x input tokens: a maximal given answer
        # (512 tokens) over a 4,096-token input needed 512 backward passes over ~4,600 tokens
        # (hours of CPU), and 64 rows there are still 64 of them.
        rows_shown = heatmap_rows(batch.prompt_ids.shape[1], len(items))
        capped = first_rows(batch, rows_shown)
        shown = attributor.attribute(Scorer(loaded, capped, rows="tokens"))
    seconds = (time.perf_counter() - t0) / len(items)
    lp = batch.prompt_ids.shape[1]
    settings = {
        "top_k": top_k,
        "aggregate": how,
        "rows": rows,
        "token_matrix": bool(token_matrix or rows == "tokens"),
        "piece_aggregation": piece_aggregation,
        "max_new_tokens": max_new_tokens,
        "chat_template": prompts[0].chat,
        **attributor.settings,
    }
    results = []
    for b, (e, ans_ids) in enumerate(zip(enc, given)):
        n, t = len(e.ids), (1 if rows == "answer" else len(ans_ids))
        sl = slice(lp - n, lp) if not loaded.is_encoder_decoder else slice(0, n)
        scores = aggregate(out.matrix[b, :t, sl].detach().float().cpu(), how)
        t_shown = 1 if shown.matrix.shape[1] == 1 else min(len(ans_ids), shown.matrix.shape[1])
        matrix = shown.matrix[b, :t_shown, sl].detach().float().cpu()
        if 1 < t_shown < len(ans_ids):
            e.warnings.append(heatmap_note(t_shown, len(ans_ids)))
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
            for k, v in {**shown.extras, **out.extras}.items()
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
                if t_shown == 1 and len(ans_ids) != 1
                else [tok.decode([i]) for i in ans_ids[:t_shown]],
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
