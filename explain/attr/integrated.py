"""Integrated gradients with Captum's quadrature rules and batched Jacobian rows.

Captum's ``IntegratedGradients`` integrates one scalar per example; here every answer token is a
row, so each step's gradients come from one forward and one vectorised backward. The
completeness gap (sum of attributions against ``f(x) - f(baseline)``) is reported per example.
"""

from __future__ import annotations

import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from ..lm_scoring import Scorer
from .base import AttributionMethod, MethodOutput, register
from .gradient import jacobian_rows


@register
class IntegratedGradientsMethod(AttributionMethod):
    name = "integrated_gradients"
    signed = True
    description = "path integral of gradients from a baseline to the input (Sundararajan 2017)"
    defaults = {"n_steps": 32, "baseline": "pad", "method": "gausslegendre", "batch_steps": 8}
    max_input_tokens = 1_024  # n_steps backward passes per answer row
    max_steps = 256

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        from ..errors import InputError

        n = self.settings["n_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_steps:
            raise InputError(f"n_steps must be a whole number from 1 to {self.max_steps}, got {n}")

    def attribute(self, scorer: Scorer) -> MethodOutput:
        n, kind = int(self.settings["n_steps"]), self.settings["baseline"]
        sizes_fn, alphas_fn = approximation_parameters(self.settings["method"])
        sizes, alphas = sizes_fn(n), alphas_fn(n)
        x = scorer.prompt_embeds
        base = scorer.baseline(kind)
        diff = x - base
        t = scorer.n_outputs
        total = torch.zeros((t, *x.shape), dtype=torch.float32, device=x.device)
        chunk = max(1, int(self.settings["batch_steps"]))
        for i in range(0, n, chunk):
            a = alphas[i : i + chunk]
            w = torch.tensor(sizes[i : i + chunk], dtype=torch.float32, device=x.device)
            xs = torch.cat([base + alpha * diff for alpha in a])  # step-major copies
            g = jacobian_rows(scorer, xs).float().view(t, len(a), *x.shape)
            total += (g * w.view(1, -1, 1, 1, 1)).sum(dim=1)
        attr = total * diff.float()  # [T, B, Lp, D]
        matrix = attr.sum(dim=-1).transpose(0, 1)  # [B, T, Lp]
        with torch.no_grad():
            delta_f = scorer(x) - scorer(base)  # [B, T]
        gap = (matrix.sum(dim=-1) - delta_f).abs()
        rel = gap.sum(dim=1) / delta_f.abs().sum(dim=1).clamp(min=1e-12)
        extras = {
            "completeness_gap": [float(v) for v in rel],
            "completeness_gap_abs": [float(v) for v in gap.sum(dim=1)],
        }
        return MethodOutput(matrix, extras)
