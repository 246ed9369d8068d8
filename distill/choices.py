"""Choice scoring: rank a question's options by their log-likelihood after its prompt.

The prompt is run once per question and every option is scored from that pass: decoder-only
models continue from the prompt's key/value cache (repeated once per option), encoder-decoders
reuse the encoder states and run the decoder per option. Rankings are reported two ways, as
lm-evaluation-harness reports ``acc`` and ``acc_norm``: by summed log-likelihood, and by that
sum divided by the option's length in characters (which does not favour short options).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from explain.lm_scoring import collate
from explain.models import LoadedModel


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


def _group_rows(counts: list[int]) -> list[int]:
    """Row -> its question's position in the group, each question repeated per option."""
    return [k for k, n in enumerate(counts) for _ in range(n)]


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
    done = 0
    with _EvalMode(loaded.model):
        for group in _length_batches([len(s) for s in sources], batch_size):
            done += len(group)
            group = [i for i in group if options[i]]
            if group:
                _score_group(loaded, sources, options, group, out)
            if progress:
                progress(done, len(sources))
    return out


def _score_group(loaded, sources, options, group, out) -> None:
    """Score the options of the questions in ``group`` into ``out`` (one batched pass)."""
    pad = loaded.tokenizer.pad_token_id
    model, dev = loaded.model, loaded.device
    counts = [len(options[i]) for i in group]
    rows = _group_rows(counts)
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


__all__ = ["OptionRanking", "option_logprobs", "rank_options"]
