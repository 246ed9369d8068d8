"""Bytes autograd keeps per sequence token during the attribution forward, with and without
layer checkpointing, for each pack's architecture (issue 9).

Cheap where bench/explain_memory.py is not (a Qwen Explain at 4,096 tokens takes many minutes
on a shared 2-core CPU): a randomly initialised model with the pack's config (from its cached
``model`` folder) and 1 or 2 layers runs the scoring forward (``logits_to_keep`` answer
positions, as explain.lm_scoring) at 256 and 512 tokens under
``torch.autograd.graph.saved_tensors_hooks``; differences give the bytes per layer per token
and per token outside the layers, scaled to the pack's depth. This counts the tensors kept for
the backward, not the allocator's peak (the backward adds one layer's activations and the row
chunk's gradients at a time): a lower bound of the forward's share, not an RSS measurement.

    python bench/explain_memory_saved.py   # writes bench/results/explain_memory_saved.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKS = {"smollm2-135m-instruct": torch.float32, "qwen2.5-coder-1.5b-instruct": torch.bfloat16}
OUT = ROOT / "bench" / "results" / "explain_memory_saved.json"


def saved_bytes(model, length: int, dtype: torch.dtype, checkpoint: bool) -> int:
    from explain.lm_scoring import checkpointed, saved_tensor_bytes

    x = torch.randn(1, length, model.config.hidden_size, dtype=dtype, requires_grad=True)

    def forward() -> None:
        if checkpoint:
            with checkpointed(model):
                model(inputs_embeds=x, logits_to_keep=9, use_cache=False)
        else:
            model(inputs_embeds=x, logits_to_keep=9, use_cache=False)

    return saved_tensor_bytes(forward)


def measure(name: str, dtype: torch.dtype) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(Path.home() / ".cache" / "kdlens" / "packs" / name / "model")
    depth = cfg.num_hidden_layers
    got = {}
    for layers in (1, 2):
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
        for length in (256, 512):
            for ck in (False, True):
                got[layers, length, ck] = saved_bytes(model, length, dtype, ck)
    out = {"layers": depth, "dtype": str(dtype).replace("torch.", "")}
    for ck in (False, True):
        layer = (got[2, 512, ck] - got[1, 512, ck] - got[2, 256, ck] + got[1, 256, ck]) / 256
        other = (got[1, 512, ck] - got[1, 256, ck]) / 256 - layer
        out["checkpointed" if ck else "plain"] = {
            "per_layer_per_token_bytes": layer,
            "outside_layers_per_token_bytes": other,
            "per_token_mb": round((layer * depth + other) / 2**20, 4),
        }
    return out


def main() -> None:
    torch.set_num_threads(1)
    result = {name: measure(name, dtype) for name, dtype in PACKS.items()}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
