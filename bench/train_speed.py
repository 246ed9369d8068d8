"""Student training throughput: our loop against Hugging Face ``Trainer``, same process.

Both train the same student on the same examples (the same tokenized prompts and targets from
distill.features), with the same batch size, sequence lengths, precision, optimizer (AdamW),
learning rate and number of steps. Throughput is real (non-padding) tokens per second over
the steps after the first (warm-up), reported with the ratio ours / Trainer.

    python bench/train_speed.py --steps 12 --batch-size 8          # SmolLM2 pack, CQA, fp32, CPU
    python bench/train_speed.py --steps 12 --batch-size 8 --bf16   # bf16 autocast, both loops
    python bench/train_speed.py --task esnli --bf16 --freeze-embeddings  # the cpu preset's recipe

Trainer gets its fastest AdamW (``adamw_torch_fused``, as ours) unless ``--trainer-optim``
says otherwise. Ours also runs a second time with the model's own attention kernel (SDPA)
instead of the eager attention it uses for training on a CPU: ``ratio_eager_over_sdpa``.
Results: bench/results/train_speed.json, one entry per precision (and task, beside CQA).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import default_path, load_task  # noqa: E402
from distill.features import IGNORE, example_features  # noqa: E402
from distill.train import TrainConfig, freeze_embeddings, train  # noqa: E402
from explain.io import atomic_write_text  # noqa: E402
from explain.models import load_model  # noqa: E402


def trainer_tokens_per_s(loaded, feats, args) -> float:
    """HF Trainer on the same features (right padding, the model's own loss)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Features(torch.utils.data.Dataset):
        def __len__(self):
            return len(feats)

        def __getitem__(self, i):
            return {"input_ids": feats[i].input_ids, "labels": feats[i].labels}

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        pad = loaded.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), IGNORE)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1)  # fmt: skip
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
    if args.freeze_embeddings:  # Trainer's optimizer takes the parameters that need grad
        freeze_embeddings(model)
    model.train()
    targs = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=10**6, save_strategy="no",
        report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        seed=0, max_grad_norm=1.0, optim=args.trainer_optim, disable_tqdm=True, bf16=args.bf16,
        remove_unused_columns=False,
    )  # fmt: skip
    # Same batches as ours: a fixed sampler order is not needed for throughput, sizes are.
    trainer = Trainer(model=model, args=targs, train_dataset=Features(), data_collator=collate,
                      callbacks=[Clock()])  # fmt: skip
    loader = trainer.get_train_dataloader()
    for batch in loader:
        tokens.append(int(batch["attention_mask"].sum()))
        if len(tokens) >= args.steps:
            break
    trainer.train()
    mean_tokens = sum(tokens) / len(tokens)
    return mean_tokens / (sum(times[1:]) / len(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="cqa")
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops")
    ap.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="both loops keep the token embeddings fixed; ours also runs without",
    )
    ap.add_argument("--trainer-optim", default="adamw_torch_fused")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "train_speed"))
    args = ap.parse_args()

    data = default_path(args.task, args.datasets)
    n = args.steps * args.batch_size
    loaded = load_model(args.student, device="cpu", dtype="fp32",
                        use_chat_template=args.chat_template)  # fmt: skip
    examples = load_task(args.task, data, limit=n)
    feats = [f for e in examples for f in example_features(loaded, e, "standard",
                                                            max_len=args.max_len)]  # fmt: skip
    t_hf = trainer_tokens_per_s(loaded, feats, args)

    cfg = TrainConfig(student=args.student, task=args.task, data=str(data), steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, schedule="constant", dev_size=0,
                      limit=n, eval_every=0, save_every=0, out="", max_len=args.max_len,
                      chat_template=args.chat_template, bf16=args.bf16,
                      freeze_embeddings=args.freeze_embeddings)  # fmt: skip

    def ours_tokens_per_s(name: str) -> float:
        records: list[dict] = []
        cfg.out = str(Path(args.out) / f"{name}-{time.strftime('%H%M%S')}")
        train(cfg, progress=lambda r: records.append(r) if "tokens_per_s" in r else None,
              model_loader=lambda spec, **kw: load_model(spec, **kw))  # fmt: skip
        ours = [r["tokens_per_s"] for r in records[1:]]
        return sum(ours) / len(ours)

    t_ours = ours_tokens_per_s("ours")
    # The same loop with the model's own attention kernel (SDPA; on a CPU ours switches to
    # eager attention for training: distill.train.training_attention).
    import distill.train as train_mod

    keep = train_mod.training_attention
    train_mod.training_attention = lambda model, device: None
    try:
        t_sdpa = ours_tokens_per_s("ours-sdpa")
    finally:
        train_mod.training_attention = keep
    t_unfrozen = None
    if args.freeze_embeddings:  # the same loop training the embeddings too
        cfg.freeze_embeddings = False
        t_unfrozen = ours_tokens_per_s("ours-unfrozen")
    result = {
        "command": " ".join(sys.argv), "student": args.student, "task": args.task,
        "steps": args.steps, "batch_size": args.batch_size, "max_len": args.max_len,
        "precision": "bf16" if args.bf16 else "fp32", "threads": torch.get_num_threads(),
        "trainer_optim": args.trainer_optim, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trainer_tokens_per_s": round(t_hf, 1), "ours_tokens_per_s": round(t_ours, 1),
        "ratio_ours_over_trainer": round(t_ours / t_hf, 3),
        "ours_sdpa_tokens_per_s": round(t_sdpa, 1),
        "ratio_eager_over_sdpa": round(t_ours / t_sdpa, 3),
        "freeze_embeddings": args.freeze_embeddings,
    }  # fmt: skip
    if t_unfrozen:
        result["ours_unfrozen_tokens_per_s"] = round(t_unfrozen, 1)
        result["ratio_frozen_over_unfrozen"] = round(t_ours / t_unfrozen, 3)
    print(json.dumps(result, indent=1))
    dest = ROOT / "bench" / "results" / "train_speed.json"
    old = json.loads(dest.read_text()) if dest.is_file() else {}
    runs = old if "command" not in old else {}  # the file once held a single fp32 result
    key = result["precision"] if args.task == "cqa" else f"{result['precision']}-{args.task}"
    key += "-frozen-embeddings" if args.freeze_embeddings else ""
    runs[key] = result
    atomic_write_text(dest, json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
