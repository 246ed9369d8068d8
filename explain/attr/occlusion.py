"""Occlusion on Captum: drop in each answer token's log-prob when one prompt token is masked.

The forward function returns all answer tokens at once, so Captum's multi-output ablation
yields the whole [T, Lp] matrix from Lp masked forward passes.
"""

from __future__ import annotations

from captum.attr import Occlusion

from ..lm_scoring import Scorer
from .base import AttributionMethod, MethodOutput, register


@register
class OcclusionMethod(AttributionMethod):
    name = "occlusion"
    signed = True
    description = "drop in answer log-prob when a token's embedding is replaced by the baseline"
    defaults = {"baseline": "pad", "perturbations_per_eval": 8}
    max_input_tokens = 512  # one forward pass per input token

    def attribute(self, scorer: Scorer) -> MethodOutput:
        x = scorer.prompt_embeds
        b, lp, d = x.shape
        attr = Occlusion(scorer).attribute(
            x,
            sliding_window_shapes=(1, d),
            strides=(1, d),
            baselines=scorer.baseline(self.settings["baseline"]),
            perturbations_per_eval=int(self.settings["perturbations_per_eval"]),
        )  # [B*T, Lp, D], every element of a token's row holds that token's drop
        t = scorer.n_outputs
        return MethodOutput(attr.float().mean(dim=-1).view(b, t, lp))
