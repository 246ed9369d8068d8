"""What one student training step costs per example, by mode, batch size and frozen blocks.

The cpu preset's size is bounded by this cost (distill/plan.py). SmolLM2-135M on e-SNLI,
bf16 autocast, fused AdamW, token embeddings frozen as in the preset; each figure is the mean
of ``--steps`` steps after one warm-up step, on the same examples for every row. Ratios are
against the first mode's first row in the same run. ``--share both`` times each multi-task
mode with its pairs' common prompt read once (the trainer's way) and with one row per pair:

    python bench/step_cost.py --batch-sizes 8 16 32
    python bench/step_cost.py --freeze-layers 15 --batch-sizes 8
    python bench/step_cost.py --modes standard random dss standard --batch-sizes 8 \
        --share both --steps 8 --out bench/results/step_cost_shared.json

(``random`` stands in for ``saliency``: the same k = 5 input words, no teacher run needed.)
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
from distill.data import attach_llm_rationales, load_llm_rationales, load_task  # noqa: E402
from distill.features import batch_loss, collate_groups, step_counts  # noqa: E402
from distill.plan import default_data  # noqa: E402
from distill.tasks import get_task  # noqa: E402
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
    p.add_argument("--modes", nargs="+", default=["standard"])
    p.add_argument("--share", choices=["yes", "no", "both"], default="yes")
    p.add_argument("--out", default=None, help="also write the rows to this JSON file")
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
    llm = load_llm_rationales(Path(default_data(args.task)).parent,
                              get_task(args.task).llm_split or "train")  # fmt: skip
    attach_llm_rationales(examples, llm)  # dss's explain targets
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    pad = loaded.tokenizer.pad_token_id
    shares = {"yes": [True], "no": [False], "both": [False, True]}[args.share]
    rows, base = [], None
    for mode in args.modes:
        cfg = TrainConfig(student=args.student, task=args.task, data="", mode=mode)
        items = encode_items(loaded, examples, cfg, None)
        multi = any(len(g) > 1 for g in items)
        opt = adamw([q for q in model.parameters() if q.requires_grad], cfg, cpu)
        for share in shares if multi else [True]:
            for bs in args.batch_sizes:
                times, tokens = [], 0
                for s in range(args.steps + 1):
                    idx = list(range(s * bs, (s + 1) * bs))
                    groups = [items[i] for i in idx]
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    loss, _ = batch_loss(model, groups, step_counts(items, [idx]), pad, False,
                                         cpu, autocast, share)  # fmt: skip
                    loss.backward()
                    opt.step()
                    times.append(time.perf_counter() - t0)
                    if s:
                        batch = collate_groups(groups, pad, False, share)
                        tokens += int(batch["input_ids"].numel())
                per_step = sum(times[1:]) / args.steps  # the first step warms up
                per_example = per_step / bs
                base = base or per_example
                rows.append({"mode": mode, "shared_prompt": share if multi else None,
                             "batch_size": bs, "freeze_layers": args.freeze_layers,
                             "s_per_step": round(per_step, 3),
                             "ms_per_example": round(per_example * 1000, 1),
                             "padded_tokens_per_step": round(tokens / args.steps, 1),
                             "ratio_to_first": round(per_example / base, 3)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        meta = {"command": "python bench/step_cost.py " + " ".join(argv or sys.argv[1:]),
                "student": args.student, "task": args.task, "threads": torch.get_num_threads(),
                "rows": rows}  # fmt: skip
        Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
