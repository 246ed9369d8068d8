"""What one student training step costs per example, by batch size and frozen blocks.

The cpu preset's size is bounded by this cost (distill/plan.py). SmolLM2-135M on e-SNLI's
standard pairs, bf16 autocast, fused AdamW, token embeddings frozen as in the preset; each
figure is the mean of 3 steps after one warm-up step, and the ratio is against the first
batch size in the same run:

    python bench/step_cost.py --batch-sizes 8 16 32
    python bench/step_cost.py --freeze-layers 15 --batch-sizes 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import TrainConfig  # noqa: E402
from distill.data import load_task  # noqa: E402
from distill.features import batch_loss, step_counts  # noqa: E402
from distill.plan import default_data  # noqa: E402
from distill.train import (  # noqa: E402
    adamw,
    encode_items,
    freeze_embeddings,
    freeze_layers,
    training_attention,
)
from explain.models import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="smollm2-135m-instruct")
    p.add_argument("--task", default="esnli")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--freeze-layers", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    loaded = load_model(args.student, device=cpu, dtype="fp32", use_chat_template=False)
    model = loaded.model
    model.train()
    training_attention(model, cpu)
    for param in model.parameters():
        param.requires_grad_(True)
    if args.freeze_layers:
        freeze_layers(model, args.freeze_layers)
    else:
        freeze_embeddings(model)
    need = max(args.batch_sizes) * (args.steps + 1)
    examples = load_task(args.task, default_data(args.task), limit=need)
    cfg = TrainConfig(student=args.student, task=args.task, data="")
    items = encode_items(loaded, examples, cfg, None)
    opt = adamw([q for q in model.parameters() if q.requires_grad], cfg, cpu)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    pad = loaded.tokenizer.pad_token_id
    rows, base = [], None
    for bs in args.batch_sizes:
        times = []
        for s in range(args.steps + 1):
            idx = list(range(s * bs, (s + 1) * bs))
            feats = [f for i in idx for f in items[i]]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, _ = batch_loss(model, feats, step_counts(items, [idx]), pad, False, cpu,
                                 autocast)  # fmt: skip
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        per_step = sum(times[1:]) / args.steps  # the first step warms up
        per_example = per_step / bs
        base = base or per_example
        rows.append({"batch_size": bs, "freeze_layers": args.freeze_layers,
                     "s_per_step": round(per_step, 3),
                     "ms_per_example": round(per_example * 1000, 1),
                     "ratio_to_first": round(per_example / base, 3)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
