"""Gradient methods on Captum, with a batched Jacobian in place of one backward per row.

Captum's ``Saliency`` and ``InputXGradient`` take a ``gradient_func``; ours runs one forward
pass and vectorised backwards (``is_grads_batched``) over chunks of answer tokens, returning the
gradient of every answer token's log-prob w.r.t. every prompt embedding, laid out [T, B, Lp, D]
so Captum's ``gradients * inputs`` broadcasts per example. Each chunk is reduced over the
embedding dimension before the next (``captum_rows``), so the full Jacobian is never held.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from captum.attr import InputXGradient, Saliency
from torch import Tensor

from ..lm_scoring import Scorer
from .base import AttributionMethod, MethodOutput, register

# Messages torch raises when a kernel has no batching rule (vmap over ``grad_outputs``); only
# these mean "run the rows one by one" -- out-of-memory and real bugs must surface unchanged.
NO_BATCHING_RULE = ("Batching rule not implemented", "We could not generate a fallback", "vmap: ")


def _lacks_batching_rule(e: RuntimeError) -> bool:
    msg = str(e)
    return any(m in msg for m in NO_BATCHING_RULE) and "out of memory" not in msg.lower()


def _grad_rows(out: Tensor, x: Tensor, rows: range, keep: bool) -> Tensor:
    """Gradients of ``out[:, i]`` for i in ``rows``: one vectorised backward, else one per row."""
    t = out.shape[1]
    eye = torch.eye(t, dtype=out.dtype, device=out.device)[rows.start : rows.stop]
    grad_outputs = eye[:, None, :].expand(len(rows), out.shape[0], t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vmap slow-fallback notices
            (g,) = torch.autograd.grad(
                out, x, grad_outputs, retain_graph=True, is_grads_batched=True
            )
        return g
    except RuntimeError as e:
        if not _lacks_batching_rule(e):
            raise
    # The graph was retained above, so these per-row backwards can still walk it.
    last = rows.stop - 1
    return torch.stack(
        [torch.autograd.grad(out[:, i].sum(), x, retain_graph=keep or i < last)[0] for i in rows]
    )


def jacobian_rows(fn, x: Tensor, chunk: int | None = None) -> Tensor:
    """d fn(x)[b, t] / d x[b] for every t, as [T, B, *x.shape[1:]], one forward pass.

    Rows go through the backward ``chunk`` at a time (default: as many as the scorer's memory
    budget allows), so peak memory stops growing with the answer length past one chunk; the
    result equals the all-rows-at-once Jacobian.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)  # [B, T]
        t = out.shape[1]
        if chunk is None:
            chunk = fn.rows_per_chunk(x.shape[0]) if hasattr(fn, "rows_per_chunk") else t
        chunk = max(1, int(chunk))
        parts = []
        for start in range(0, t, chunk):
            rows = range(start, min(start + chunk, t))
            parts.append(_grad_rows(out, x, rows, keep=rows.stop < t))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _leaf(scorer: Scorer) -> Tensor:
    return scorer.prompt_embeds.detach().requires_grad_(True)


def captum_rows(cls, scorer: Scorer, reduce: Callable[[Tensor], Tensor], **kwargs) -> Tensor:
    """Captum's ``cls`` for every answer row, each chunk of rows ``reduce``d (over the
    embedding dimension) before the next is computed: [T, B, Lp] from one forward pass.

    Only one chunk's [rows, B, Lp, D] gradients exist at a time. Keeping them all (then
    concatenating them) made memory grow with answer x prompt length past the chunk: 512 answer
    tokens over a 4,096-token prompt held 4.8 GB of SmolLM2 fp32 gradients, twice that while
    concatenated (issue 9). The values equal the whole-Jacobian computation.
    """
    x = _leaf(scorer)
    with torch.enable_grad():
        out = scorer(x)  # [B, T]
    t = out.shape[1]
    chunk = max(1, int(scorer.rows_per_chunk(x.shape[0])))
    parts = []
    for start in range(0, t, chunk):
        rows = range(start, min(start + chunk, t))

        def gradient_func(*_captum_args, rows=rows):  # Captum's (forward_fn, inputs, ...)
            return (_grad_rows(out, x, rows, keep=rows.stop < t),)

        method = cls(scorer)
        method.gradient_func = gradient_func
        with torch.no_grad():  # Captum's ``inputs * gradients`` must not keep the gradients
            parts.append(reduce(method.attribute(x, **kwargs)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@register
class SaliencyMethod(AttributionMethod):
    name = "saliency"
    signed = False
    description = "gradient of the answer log-prob, L2 norm over the embedding dimension"

    def attribute(self, scorer: Scorer) -> MethodOutput:
        norms = captum_rows(Saliency, scorer, lambda g: g.float().norm(dim=-1), abs=False)
        return MethodOutput(norms.transpose(0, 1))  # [B, T, Lp]


@register
class InputXGradientMethod(AttributionMethod):
    name = "input_x_gradient"
    signed = True
    description = "gradient times input embedding, summed over the embedding dimension"

    def attribute(self, scorer: Scorer) -> MethodOutput:
        sums = captum_rows(InputXGradient, scorer, lambda a: a.float().sum(dim=-1))
        return MethodOutput(sums.transpose(0, 1))
