"""Fine-tune a small student with (or without) teacher rationales.

What each mode trains on lives in :mod:`distill.modes` (``standard``, ``saliency``, ``dss``,
``random``, ``hint``); prompts come from the one formatting path (:mod:`distill.features`).

Loss: for each kind of target (``predict`` labels, ``explain`` rationales), the per-token mean
negative log-likelihood over the *effective* batch (all micro-batches of a step, on all
processes), weighted by the pair's weight: ``alpha`` and ``1 - alpha`` in multi-task modes,
1 for the label of an example without a rationale. Batch 2 x accumulation 4 therefore equals
batch 8.

The loop is deliberately plain (nanoGPT style) on Hugging Face Accelerate. The batch order is
a pure function of (seed, epoch), so a killed run resumes from its last checkpoint (model,
optimizer, scheduler and per-process RNG states) and ends with exactly the parameters of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from explain.errors import one_line
from explain.formatting import task_answers
from explain.models import LoadedModel, load_model

from .checkpoints import load_checkpoint, save_checkpoint
from .config import (
    BatchOrder,
    TrainConfig,
    TrainError,
    lr_lambda,
    rationale_source,
    record_defaults,
    run_path,
    run_record,
    total_steps,
)
from .features import Features, batch_loss, example_features, step_counts
from .modes import MODES, get_mode
from .rationales import RationaleError, check_hint_source, rationale_map
from .runs import RunDir

# ---------------------------------------------------------------------------------------------
# Training


def _precision(bf16: str | bool) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that support it when ``auto``, else as asked."""
    if bf16 == "auto":
        use = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        use = bf16 in (True, "true", "1", "yes", "on", "bf16")
    return torch.bfloat16 if use else None


def _accelerator():
    from accelerate import Accelerator

    # Mixed precision is applied with torch.autocast (see _train), so every Accelerator of a
    # process has the same settings and one process (the app) may train with and without bf16.
    return Accelerator(cpu=not torch.cuda.is_available())


def _load_examples(config: TrainConfig):
    from .data import attach_llm_rationales, load_llm_rationales, load_task, split
    from .tasks import get_task

    examples = load_task(config.task, config.data, limit=config.limit)
    if get_mode(config.mode).needs == "llm" and not any(e.llm_rationale for e in examples):
        folder = Path(config.llm_rationales or Path(config.data).parent)
        spec = get_task(config.task)
        attach_llm_rationales(examples, load_llm_rationales(folder, spec.llm_split or "train"))
    return split(examples, config.dev_size, config.seed)


def adamw(params, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel: on CPU the per-parameter loop took 0.30 s of
    a 2 s SmolLM2 step, the fused kernel 0.05 s (bench/train_speed.py); same update rule."""
    kw = {"lr": config.lr, "weight_decay": config.weight_decay}
    if device.type in ("cpu", "cuda"):
        kw["fused"] = True
    return torch.optim.AdamW(params, **kw)


def check_hints(mode: str, rationales: str | Path | None) -> None:
    """Hints at evaluation come from the teacher's own answers only: a hint made by
    attributing the gold label would hand the student the answer."""
    if get_mode(mode).uses_hints and rationales:
        try:
            check_hint_source(rationales)
        except RationaleError as e:
            raise TrainError(str(e)) from None


def encode_items(loaded, examples, config: TrainConfig, rmap) -> list[list[Features]]:
    """Every example's training pairs (see :mod:`distill.modes`), as features."""
    return [
        example_features(
            loaded,
            ex,
            config.mode,
            rmap.get(ex.id) if rmap is not None else None,
            config.alpha,
            config.seed,
            config.max_len,
            config.task_marker,
        )
        for ex in examples
    ]


def train(
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
    model_loader: Callable[..., LoadedModel] = load_model,
) -> dict:
    """Train (or resume) the run ``config.out``; returns its summary.

    ``stop`` set: finish the current step, checkpoint, mark the run 'stopped' (resumable)
    and return. ``model_loader(spec, device=, dtype=, use_chat_template=)`` lets tests pass
    tiny models.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from .data import data_hash

    config.validate()
    check_hints(config.mode, config.rationales)
    emit = progress or (lambda record: None)
    train_ex, dev_ex = _load_examples(config)  # data errors come before any folder exists
    rmap = rationale_map(config.rationales) if config.rationales else None
    if rmap is not None and not any(e.id in rmap for e in train_ex):
        raise TrainError(f"no training example has a rationale in {config.rationales}")
    run = RunDir(run_path(config))
    record = run_record(config, data_hash(config.data), len(train_ex), len(dev_ex))
    state = PartialState(cpu=not torch.cuda.is_available())
    defaults = record_defaults()
    run.check(record, defaults)  # a finished run or other settings: refuse before loading
    accelerator = _accelerator()
    set_seed(config.seed)
    emit({"stage": "loading", "message": f"loading {config.student}", "run_dir": str(run.path)})
    loaded = model_loader(
        config.student, device=accelerator.device, dtype="fp32",
        use_chat_template=config.chat_template,
    )  # fmt: skip
    if config.freeze_layers:  # a count the student cannot take: refuse before any folder
        blocks_to_freeze(loaded.model, config.freeze_layers)
    # The run folder appears only once data, rationales and the model have loaded.
    resumed = run.create(record, defaults) if state.is_main_process else True
    state.wait_for_everyone()
    if state.is_main_process:
        run.set_status("running")
    try:
        ctx = _Ctx(config, run, accelerator, loaded, dev_ex, rmap, emit, task_answers(train_ex))
        return _train(ctx, resumed, train_ex, stop)
    except Exception as e:
        if state.is_main_process:
            run.set_status("failed", error=one_line(e))
        raise


@dataclass
class _Ctx:
    """What the loop, the dev evaluation and the final save share."""

    config: TrainConfig
    run: RunDir
    accelerator: object
    loaded: LoadedModel
    dev_ex: list
    rmap: dict | None
    emit: Callable[[dict], None]
    cap_answers: list[str]  # the training split's answers and options: the generation cap
    model: torch.nn.Module | None = None


def training_attention(model, device: torch.device) -> str | None:
    """Eager attention for training on a CPU: the CPU flash-attention kernel's backward costs
    a large share of a short-sequence step (12 ms per layer at 8x90 tokens, 15% of a SmolLM2
    step; eager is 1.24x SDPA's tokens/s on e-SNLI in bench/train_speed.py). Returns the
    choice."""
    config = getattr(model, "config", None)
    if device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError, ImportError):  # a model class without eager attention
        return None
    return "eager"


def freeze_embeddings(model: torch.nn.Module) -> int:
    """Fix the input token embeddings, and with them an output head that shares their
    tensor (an untied head keeps learning). Returns the parameters frozen."""
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)
    return weight.numel()


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's stack of blocks: the module list as long as the config's layer count
    (``model.layers`` in Llama/Qwen, ``transformer.h`` in GPT-2)."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise TrainError("freeze_layers works with decoder-only students only")
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not n or len(lists) != 1:
        raise TrainError(f"cannot find the transformer blocks of {type(model).__name__}")
    return lists[0]


def blocks_to_freeze(model: torch.nn.Module, n: int) -> torch.nn.ModuleList:
    """The student's blocks, refusing ``n`` beyond their number."""
    blocks = transformer_blocks(model)
    if n > len(blocks):
        raise TrainError(f"freeze_layers is {n} but the student has {len(blocks)} blocks")
    return blocks


def freeze_layers(model: torch.nn.Module, n: int) -> int:
    """Fix the embeddings and the lowest ``n`` transformer blocks; returns the parameters
    frozen. Nothing below block ``n`` then needs a gradient, so backward stops there."""
    blocks = blocks_to_freeze(model, n)
    frozen = freeze_embeddings(model)
    for block in list(blocks)[:n]:
        for p in block.parameters():
            frozen += p.numel() * p.requires_grad
            p.requires_grad_(False)
    return frozen


def _train(ctx: _Ctx, resumed: bool, train_ex: list, stop) -> dict:
    config, run, accelerator, emit = ctx.config, ctx.run, ctx.accelerator, ctx.emit
    model = ctx.loaded.model
    model.train()
    training_attention(model, ctx.accelerator.device)
    for p in model.parameters():  # load_model/prepare freeze parameters for attribution
        p.requires_grad_(True)
    if config.freeze_layers:
        freeze_layers(model, config.freeze_layers)
    elif config.freeze_embeddings:
        freeze_embeddings(model)
    pad_id = ctx.loaded.tokenizer.pad_token_id
    enc_dec = ctx.loaded.is_encoder_decoder
    items = encode_items(ctx.loaded, train_ex, config, ctx.rmap)

    world, rank = accelerator.num_processes, accelerator.process_index
    total = total_steps(config, len(train_ex), world)
    lengths = (
        [sum(len(f.input_ids) + len(f.labels) * enc_dec for f in item) for item in items]
        if config.length_groups > 1
        else None
    )
    order = BatchOrder(len(train_ex), config.batch_size, config.seed, lengths,
                       config.length_groups)  # fmt: skip
    optimizer = adamw(
        [p for p in model.parameters() if p.requires_grad], config, accelerator.device
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total))

    step, elapsed_before = 0, 0.0
    ckpt = run.latest_checkpoint() if resumed else None
    if ckpt:
        meta = load_checkpoint(ckpt[1], model, optimizer, scheduler, rank)
        step, elapsed_before = meta["step"], float(meta.get("elapsed", 0.0))
        if accelerator.is_main_process:
            run.truncate_metrics(step)  # records after the checkpoint are replayed
        emit({"stage": "training", "message": f"resumed from step {step}", "step": step,
              "total": total})  # fmt: skip
    elif resumed and accelerator.is_main_process:
        run.truncate_metrics(0)  # killed before its first checkpoint: start over
    model, optimizer = accelerator.prepare(model, optimizer)
    ctx.model = model
    device = accelerator.device
    dtype = _precision(config.bf16)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def checkpoint(at: int, elapsed: float) -> None:
        if accelerator.is_main_process:
            emit({"stage": "saving", "step": at, "total": total, "message": "checkpoint"})
        save_checkpoint(run, at, accelerator.unwrap_model(model), optimizer, scheduler,
                        {"elapsed": elapsed, "total": total}, config.keep_checkpoints,
                        rank, accelerator.wait_for_everyone)  # fmt: skip

    t_start, first_step = time.perf_counter(), step
    while step < total:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        micro = [
            [order.batch((step * config.grad_accum + a) * world + r) for r in range(world)]
            for a in range(config.grad_accum)
        ]
        counts = step_counts(items, [idx for per_rank in micro for idx in per_rank])
        sums: dict[str, float] = {}
        n_examples, n_tokens, objective = 0, 0, 0.0
        for a, per_rank in enumerate(micro):
            groups = [items[i] for i in per_rank[rank]]
            n_examples += len(per_rank[rank])
            n_tokens += sum(
                len(f.input_ids) + (len(f.labels) if enc_dec else 0) for g in groups for f in g
            )
            # Skip the gradient all-reduce on all but the last micro-batch.
            sync = a == config.grad_accum - 1 or world == 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss, part = batch_loss(model, groups, counts, pad_id, enc_dec, device, autocast)
                # DDP averages gradients over processes; the objective is their sum.
                accelerator.backward(loss * world)
            objective += loss.item()
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1

        now = time.perf_counter()
        elapsed = elapsed_before + now - t_start
        per_step = (now - t_start) / (step - first_step)
        # Per-token means of this process's share of the step (the main one's on multi-GPU).
        mine = step_counts(items, [per_rank[rank] for per_rank in micro])
        label = sums.get("predict", 0.0) / max(mine.get("predict", 0), 1)
        rationale = sums["explain"] / mine["explain"] if mine.get("explain") else None
        record = {
            "step": step,
            "epoch": round(step * config.grad_accum * world / order.per_epoch, 4),
            "loss": objective * world,
            "label_loss": label,
            "rationale_loss": rationale,
            "lr": scheduler.get_last_lr()[0],
            "examples_per_s": round(n_examples * world / max(now - t0, 1e-9), 3),
            "tokens_per_s": round(n_tokens * world / max(now - t0, 1e-9), 1),
            "elapsed": round(elapsed, 3),
            "eta_s": round(per_step * (total - step), 1),
        }
        if not math.isfinite(record["loss"]):
            raise TrainError(
                f"the loss became {record['loss']} at step {step}: lower the learning rate"
            )
        if accelerator.is_main_process:
            run.log(record)
        emit({"stage": "training", "total": total, **record})

        if config.eval_every and step % config.eval_every == 0 and step < total:
            dev = _dev_eval(ctx, step, total)
            if dev is not None and accelerator.is_main_process:
                run.log({"step": step, "dev_accuracy": dev.accuracy, "dev_n": dev.n})
        stopping = stop is not None and stop.is_set()
        if stopping or (config.save_every and step % config.save_every == 0 and step < total):
            checkpoint(step, elapsed)
        if stopping:
            if accelerator.is_main_process:
                run.set_status("stopped", step=step, total=total)
            emit({"stage": "stopped", "step": step, "total": total,
                  "message": f"stopped at step {step} of {total}; resumable"})  # fmt: skip
            return {"status": "stopped", "run_dir": str(run.path), "name": run.name,
                    "step": step, "steps": step, "total": total}  # fmt: skip

    return _finish(ctx, total, elapsed_before + time.perf_counter() - t_start, len(train_ex))


def answer_cap(ctx: _Ctx) -> int:
    """Generation cap: ``max_new_tokens`` when set, else the longest training answer or option
    plus a margin (the same cap the experiment's zero-shot baseline gets)."""
    from explain.formatting import answer_budget

    if ctx.config.max_new_tokens:
        return int(ctx.config.max_new_tokens)
    return answer_budget(ctx.loaded, ctx.cap_answers)


def _dev_eval(ctx: _Ctx, step: int, total: int, choices: bool = False, hints: bool = True):
    """Generation accuracy on the dev split (main process), model back in train mode after."""
    from .evaluate import evaluate

    accelerator, config = ctx.accelerator, ctx.config
    if not ctx.dev_ex or not accelerator.is_main_process:
        return None
    ctx.emit({"stage": "evaluating", "step": step, "total": total, "message": "dev evaluation"})
    view = dataclasses.replace(ctx.loaded, model=accelerator.unwrap_model(ctx.model))
    result = evaluate(
        view,
        config.task,
        ctx.dev_ex,
        mode=config.mode,
        rationales=ctx.rmap if hints else None,
        limit=config.dev_limit,
        batch_size=config.eval_batch_size or config.batch_size,
        max_new_tokens=answer_cap(ctx),
        max_len=config.max_len,
        choices=choices,
        marker=config.task_marker,
    )
    if hints:
        ctx.emit({"stage": "training", "step": step, "total": total,
                  "dev_accuracy": result.accuracy})  # fmt: skip
    return result


def hint_coverage(dev_ex: list, rmap: dict | None, limit: int | None) -> float:
    """Fraction of evaluated dev examples that had a hint (a rationale from the teacher)."""
    shown = dev_ex[:limit] if limit else dev_ex
    if not shown:
        return 0.0
    return sum(bool(rmap and rmap.get(e.id)) for e in shown) / len(shown)


def save_final_model(run: RunDir, model, tokenizer) -> Path:
    """Write ``model/`` so that a reader sees the old folder or the new one, never a mix."""
    tmp, old = run.path / ".model.tmp", run.path / ".model.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if run.model_dir.exists():  # an earlier finish that died before its summary
        shutil.rmtree(old, ignore_errors=True)
        os.rename(run.model_dir, old)
    os.rename(tmp, run.model_dir)  # atomic on one filesystem
    shutil.rmtree(old, ignore_errors=True)
    return run.model_dir


def _finish(ctx: _Ctx, total: int, elapsed: float, n_train: int) -> dict:
    """Final dev evaluation, final model as safetensors in ``model/``, summary.json."""
    from explain.io import atomic_write_text

    config, run, accelerator, emit = ctx.config, ctx.run, ctx.accelerator, ctx.emit
    accelerator.wait_for_everyone()
    summary = {
        "run_dir": str(run.path),
        "name": run.name,
        "kind": "train",
        "mode": config.mode,
        "student": config.student,
        "task": config.task,
        "steps": total,
        "train_examples": n_train,
        "dev_examples": min(len(ctx.dev_ex), config.dev_limit or 10**9),
        "elapsed_s": round(elapsed, 2),
    }
    metrics = [r for r in run.metrics() if "loss" in r]
    if metrics:
        summary["final_loss"] = metrics[-1]["loss"]
    result = _dev_eval(ctx, total, total, choices=True)
    if result is not None:
        summary.update(
            accuracy=result.accuracy,
            ci_low=result.ci_low,
            ci_high=result.ci_high,
            choice_accuracy=result.choice_accuracy,
            n=result.n,
        )
        run.log({"step": total, "dev_accuracy": result.accuracy, "dev_n": result.n})
        lines = "".join(json.dumps(p) + "\n" for p in result.predictions)
        atomic_write_text(run.path / "dev_predictions.jsonl", lines)
        if get_mode(config.mode).uses_hints:  # hint words are a crutch: also report without
            summary["hint_coverage"] = hint_coverage(ctx.dev_ex, ctx.rmap, config.dev_limit)
            bare = _dev_eval(ctx, total, total, choices=True, hints=False)
            summary.update(
                accuracy_no_hint=bare.accuracy, choice_accuracy_no_hint=bare.choice_accuracy
            )
    if accelerator.is_main_process:
        emit({"stage": "saving", "step": total, "total": total, "message": "saving model"})
        summary["model_dir"] = str(
            save_final_model(run, accelerator.unwrap_model(ctx.model), ctx.loaded.tokenizer)
        )
        summary["settings"] = asdict(config)
        run.finish(summary)
        run.clean_checkpoints()  # the final model is in model/; checkpoints only served resumes
    accelerator.wait_for_everyone()
    emit({"stage": "done", "step": total, "total": total, "message": "finished",
          "run_dir": str(run.path)})  # fmt: skip
    return {"status": "finished", **summary}


__all__ = [
    "MODES",
    "BatchOrder",
    "TrainConfig",
    "TrainError",
    "batch_loss",
    "check_hints",
    "encode_items",
    "rationale_source",
    "lr_lambda",
    "save_final_model",
    "step_counts",
    "total_steps",
    "train",
]
