"""One path from task fields to model inputs, for attribution, training and evaluation.

A prompt is the task template's text (with its task-input spans), optionally prefixed with a
marker and followed by hint words, then wrapped in the model's chat template, or followed by a
cue (``Answer:``) for decoder-only models without one. A multi-task student's explain task
has its own cue (``Explanation:``), the request's last line where no cue follows.

One truncation rule for every caller: when the prompt does not fit its token budget, the longest
free-text field is shortened in its middle (its head and tail stay, joined by " … "), and the
result says so in its warnings. The chat header, the options, the answer instruction and the
cue are never cut, so the model always sees the question it must answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .models import LoadedModel
from .templates import Prompt, apply_chat, get_template

ANSWER_CUE = "\nAnswer:"  # decoder-only models without a chat template
EXPLAIN_CUE = "\nExplanation:"  # the explain task of multi-task students
ELLIPSIS = " … "
MIN_WORDS = 8  # a trimmed field keeps at least this many words


@dataclass
class Source:
    """A model prompt as tokens: ids, char offsets into ``prompt.text``, special-token flags."""

    prompt: Prompt
    ids: list[int]
    offsets: list[tuple[int, int] | None]
    special: list[bool]
    warnings: list[str] = field(default_factory=list)


def uses_chat(loaded: LoadedModel) -> bool:
    return bool(
        loaded.use_chat_template and loaded.has_chat_template and not loaded.is_encoder_decoder
    )


def render_prompt(
    loaded: LoadedModel,
    template: str,
    fields: dict,
    prefix: str | None = None,
    hint: list[str] | None = None,
    cue: str = ANSWER_CUE,
) -> Prompt:
    """The full prompt text for ``loaded``; input spans point into it."""
    prompt = get_template(template).render(fields)
    text = prompt.text
    if hint:
        text += "\nHint: " + " ".join(hint)
    if cue != ANSWER_CUE and (uses_chat(loaded) or loaded.is_encoder_decoder):
        # No answer cue follows these prompts, so another task's cue (a multi-task student's
        # "Explanation:") becomes the request's last line: the tasks stay told apart.
        text += cue
    offset = 0
    if prefix:
        offset = len(prefix) + 2
        text = f"{prefix}: {text}"
    prompt = prompt.shifted(offset, text, chat=False)
    if uses_chat(loaded):
        return apply_chat(prompt, loaded.tokenizer)
    if not loaded.is_encoder_decoder:
        return Prompt(prompt.text + cue, prompt.input_spans, prompt.template, prompt.fields)
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


def tokenize_prompt(loaded: LoadedModel, prompt: Prompt) -> Source:
    """Token ids, char offsets and special-token flags of a rendered prompt (no truncation)."""
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
    return Source(prompt, ids, offsets, special)


def _shorten(text: str, keep: int) -> str:
    words = text.split()
    if keep >= len(words):
        return text
    head = (keep + 1) // 2
    return " ".join(words[:head]) + ELLIPSIS + " ".join(words[len(words) - (keep - head) :])


def build_source(
    loaded: LoadedModel,
    template: str,
    fields: dict,
    budget: int,
    prefix: str | None = None,
    hint: list[str] | None = None,
    cue: str = ANSWER_CUE,
) -> Source:
    """The tokenized prompt, fitted into ``budget`` tokens by the module's truncation rule."""
    if budget < 1:
        raise InputError(f"no room for the prompt: {budget} tokens left of the context")
    source = tokenize_prompt(loaded, render_prompt(loaded, template, fields, prefix, hint, cue))
    if len(source.ids) <= budget:
        return source
    full = len(source.ids)
    names = [n for n in get_template(template).free_fields if str(fields.get(n) or "").strip()]
    fields = dict(fields)
    trimmed = []
    # Longest field first; each is cut as little as the budget allows (binary search on words).
    for name in sorted(names, key=lambda n: -len(str(fields[n]))):
        original = " ".join(str(fields[name]).split())
        n_words = len(original.split())
        if n_words <= MIN_WORDS:
            continue

        def fits(keep: int, name: str = name, original: str = original) -> Source | None:
            trial = dict(fields, **{name: _shorten(original, keep)})
            src = tokenize_prompt(loaded, render_prompt(loaded, template, trial, prefix, hint, cue))
            return src if len(src.ids) <= budget else None

        lo, hi, best = MIN_WORDS, n_words - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            src = fits(mid)
            if src is not None:
                best, lo = (mid, src), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            trimmed.append(f"{name} kept {best[0]} of {n_words} words")
            source = best[1]
            break
        fields[name] = _shorten(original, MIN_WORDS)
        trimmed.append(f"{name} kept {MIN_WORDS} of {n_words} words")
    else:
        raise InputError(
            f"the prompt has {full} tokens and does not fit in {budget} even with its free text "
            "shortened; give a shorter input"
        )
    source.warnings.append(
        f"input truncated to fit {budget} tokens ({full} before), the middle of the longest "
        "text cut: " + "; ".join(trimmed)
    )
    return source


def encode_target(loaded: LoadedModel, text: str, eos: bool = True) -> list[int]:
    """Answer (or rationale) token ids as they follow the prompt, + EOS when ``eos``."""
    text = " ".join(str(text).split())
    if not loaded.is_encoder_decoder and not uses_chat(loaded):
        text = " " + text  # follows "Answer:" as a generated answer would
    ids = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    if eos:
        eos_id = loaded.tokenizer.eos_token_id
        if eos_id is None:
            raise InputError("the model's tokenizer has no end-of-sequence token")
        ids.append(eos_id)
    return ids


def task_answers(examples: list) -> list[str]:
    """Every gold answer and option text of ``examples`` (anything with ``label``/``options``)."""
    return [e.label for e in examples] + [o for e in examples for o in (e.options or [])]


def answer_budget(loaded: LoadedModel, answers: list[str], margin: int = 8) -> int:
    """A generation cap from the task: the longest expected answer in tokens, plus a margin."""
    longest = max((len(encode_target(loaded, a, eos=False)) for a in answers if a), default=0)
    return max(1, longest + margin)


__all__ = [
    "ANSWER_CUE",
    "EXPLAIN_CUE",
    "Source",
    "answer_budget",
    "task_answers",
    "build_source",
    "encode_target",
    "render_prompt",
    "tokenize_prompt",
    "uses_chat",
]
