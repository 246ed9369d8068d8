"""Gradient methods on Captum, with a batched Jacobian in place of one backward per row.

Captum's ``Saliency`` and ``InputXGradient`` take a ``gradient_func``; ours runs one forward
pass and one vectorised backward (``is_grads_batched``) for all answer tokens, returning the
gradient of every answer token's log-prob w.r.t. every prompt embedding, laid out [T, B, Lp, D]
so Captum's ``gradients * inputs`` broadcasts per example.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import InputXGradient, Saliency
from torch import Tensor

from .base import AttributionMethod, MethodOutput, register
from .scoring import Scorer


def jacobian_rows(fn, x: Tensor) -> Tensor:
    """d fn(x)[b, t] / d x[b] for every t, as [T, B, *x.shape[1:]], one forward pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)  # [B, T]
        t = out.shape[1]
        eye = torch.eye(t, dtype=out.dtype, device=out.device)
        grad_outputs = eye[:, None, :].expand(t, out.shape[0], t)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap fallback notices
                (g,) = torch.autograd.grad(out, x, grad_outputs, is_grads_batched=True)
        except RuntimeError:
            # Some kernels have no batching rule: one backward per row, same single forward.
            rows = [
                torch.autograd.grad(out[:, i].sum(), x, retain_graph=i < t - 1)[0] for i in range(t)
            ]
            g = torch.stack(rows)
    return g


def _captum_gradient_func(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Captum ``gradient_func`` signature, returning batched Jacobian rows."""
    return tuple(jacobian_rows(forward_fn, x) for x in inputs)


def _leaf(scorer: Scorer) -> Tensor:
    return scorer.prompt_embeds.detach().requires_grad_(True)


def _captum(cls, scorer: Scorer):
    method = cls(scorer)
    method.gradient_func = _captum_gradient_func
    return method


@register
class SaliencyMethod(AttributionMethod):
    name = "saliency"
    signed = False
    description = "gradient of the answer log-prob, L2 norm over the embedding dimension"

    def attribute(self, scorer: Scorer) -> MethodOutput:
        grads = _captum(Saliency, scorer).attribute(_leaf(scorer), abs=False)
        return MethodOutput(grads.float().norm(dim=-1).transpose(0, 1))  # [B, T, Lp]


@register
class InputXGradientMethod(AttributionMethod):
    name = "input_x_gradient"
    signed = True
    description = "gradient times input embedding, summed over the embedding dimension"

    def attribute(self, scorer: Scorer) -> MethodOutput:
        attr = _captum(InputXGradient, scorer).attribute(_leaf(scorer))
        return MethodOutput(attr.float().sum(dim=-1).transpose(0, 1))
