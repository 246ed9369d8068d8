"""Fine-tune a small student with (or without) teacher rationales.

Modes (DESIGN section 5):
- ``standard``: input -> label.
- ``saliency``: the paper. Multi-task, step-by-step style: ``predict: <input>`` -> label and
  ``explain: <input>`` -> the teacher's top-k rationale words; loss
  ``alpha * label_loss + (1 - alpha) * rationale_loss``.
- ``dss``: "Distilling step-by-step": as ``saliency`` with the PaLM free-text rationale.
- ``hint``: the rationale words appended to the input (``Hint: w1 w2 ...``) -> label.

Inference always uses the ``predict:`` task (multi-task modes) or the plain prompt.

The loop is deliberately plain (nanoGPT style) on Hugging Face Accelerate. The batch order is
a pure function of (seed, epoch), so a killed run resumes from its last checkpoint (model,
optimizer, scheduler and RNG states) and ends with exactly the parameters of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from explain.errors import KDLensError, one_line
from explain.models import LoadedModel, load_model
from explain.pipeline import ANSWER_CUE
from explain.templates import get_template

from .runs import RunDir, atomic_write_json, read_json, runs_root, safe_run_dir

MODES = ("standard", "saliency", "dss", "hint")
MULTITASK = ("saliency", "dss")
PREFIXES = ("predict", "explain")
EXPLAIN_CUE = "\nExplanation:"  # decoder-only cue for the explain task
IGNORE = -100  # label value the loss skips


class TrainError(KDLensError):
    """Settings or inputs that make a training run impossible."""


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass
class TrainConfig:
    student: str
    task: str
    data: str
    mode: str = "standard"
    rationales: str | None = None  # extraction run folder or its rationales.jsonl
    alpha: float = 0.5  # weight of the label loss in multi-task modes
    steps: int | None = None  # optimizer steps; default from epochs
    epochs: float | None = None  # default 1 when steps is not given either
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    warmup: int = 0
    weight_decay: float = 0.0
    schedule: str = "linear"  # linear decay to 0 after warmup, or constant
    max_grad_norm: float | None = 1.0
    seed: int = 0
    dev_size: float | int = 0.1
    dev_limit: int | None = 200  # dev examples used by periodic and final evaluation
    limit: int | None = None  # read at most this many records from the data file
    eval_every: int = 50  # steps; 0 = only at the end
    save_every: int = 50  # steps; 0 = only when stopped
    keep_checkpoints: int = 1
    max_len: int = 256
    out: str = ""  # run folder: a name under runs_root(), or a path
    bf16: str | bool = "auto"  # auto: bf16 mixed precision on GPUs that support it
    max_new_tokens: int = 16
    chat_template: bool = True  # wrap decoder-only prompts in the student's chat template
    llm_rationales: str | None = None  # dss: folder holding llm/; default the data's folder
    eval_batch_size: int | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TrainError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode in ("saliency", "hint") and not self.rationales:
            raise TrainError(f"mode {self.mode!r} needs rationales: give an extraction run")
        if not 0.0 <= self.alpha <= 1.0:
            raise TrainError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("batch_size", "grad_accum", "max_len", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise TrainError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise TrainError(f"steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise TrainError(f"epochs must be positive, got {self.epochs}")
        if self.lr <= 0:
            raise TrainError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("linear", "constant"):
            raise TrainError(f"unknown schedule {self.schedule!r}; use linear or constant")
        if self.warmup < 0 or self.eval_every < 0 or self.save_every < 0:
            raise TrainError("warmup, eval_every and save_every must not be negative")


def run_path(config: TrainConfig) -> Path:
    """The run folder: a bare name goes under :func:`runs_root`; a path is taken as is."""
    out = config.out or f"{config.mode}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in out or "\\" in out:
        return Path(out).expanduser()
    return safe_run_dir(runs_root(), out)


# ---------------------------------------------------------------------------------------------
# Rationales


def load_rationale_map(path: str | Path) -> dict[str, list[str]]:
    """Example id -> rationale words (input order) from an extraction's ``rationales.jsonl``.

    ``path`` is the extraction run folder or the file itself. Each line holds ``id`` and
    ``rationale``: a list of ``{text, start, end, score}`` (or plain strings).
    """
    path = Path(path)
    file = path / "rationales.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise TrainError(f"no rationales found at {path} (expected rationales.jsonl)")
    out: dict[str, list[str]] = {}
    lines = file.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            words = [w["text"] if isinstance(w, dict) else str(w) for w in rec["rationale"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines):  # a torn last line from a killed extraction
                break
            raise TrainError(f"{file.name} line {n}: not a rationale record") from None
        out[str(rec["id"])] = [w for w in words if w.strip()]
    return out


def rationale_source(path: str | Path | None) -> dict | None:
    """Settings of the extraction run the rationales came from, for the record."""
    if not path:
        return None
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    cfg = read_json(folder / "config.json", {}) or {}
    file = folder / "rationales.jsonl" if p.is_dir() else p
    from .data import data_hash

    return {
        "path": str(p),
        "sha256": data_hash(file) if file.is_file() else None,
        # Extraction configs keep their settings flat; a nested "settings" is used if present.
        "settings": cfg.get("settings")
        or {k: v for k, v in cfg.items() if k not in ("versions", "created")},
        "models": cfg.get("models"),
    }


# ---------------------------------------------------------------------------------------------
# Formatting and encoding: the one place train and evaluate turn an example into tokens


def uses_chat(loaded: LoadedModel | None) -> bool:
    return bool(
        loaded is not None
        and loaded.use_chat_template
        and loaded.has_chat_template
        and not loaded.is_encoder_decoder
    )


def format_example(
    example,
    mode: str = "standard",
    prefix: str = "predict",
    rationale_words: list[str] | None = None,
    loaded: LoadedModel | None = None,
) -> tuple[str, str]:
    """(source text, target text) for one example, task ``prefix`` and training ``mode``.

    The task input is rendered by its template; ``hint`` appends the rationale words; the
    multi-task modes put ``predict:`` / ``explain:`` in front. Decoder-only students get their
    chat template (when they have one) or an ``Answer:`` cue; encoder-decoders the plain text.
    """
    from .data import get_task

    if mode not in MODES:
        raise TrainError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if prefix not in PREFIXES:
        raise TrainError(f"unknown task prefix {prefix!r}; use predict or explain")
    body = get_template(get_task(example.task).template).render(example.fields).text
    if mode == "hint" and rationale_words:
        body += "\nHint: " + " ".join(rationale_words)
    if mode in MULTITASK:
        body = f"{prefix}: {body}"
    if prefix == "predict":
        target = example.label
    elif mode == "saliency":
        if not rationale_words:
            raise TrainError(f"example {example.id} has no rationale words")
        target = " ".join(rationale_words)
    elif mode == "dss":
        if not example.llm_rationale:
            raise TrainError(f"example {example.id} has no LLM rationale")
        target = example.llm_rationale
    else:
        raise TrainError(f"mode {mode!r} has no explain task")
    if uses_chat(loaded):
        source = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    elif loaded is not None and not loaded.is_encoder_decoder:
        source = body + (ANSWER_CUE if prefix == "predict" else EXPLAIN_CUE)
    else:
        source = body
    return source, " ".join(str(target).split())


def encode_source(loaded: LoadedModel, source: str) -> list[int]:
    # A chat template already holds its special tokens as text.
    ids = loaded.tokenizer(source, add_special_tokens=not uses_chat(loaded))["input_ids"]
    return list(ids)


def encode_target(loaded: LoadedModel, target: str, eos: bool = True) -> list[int]:
    """Target token ids (+ EOS so the student learns to stop)."""
    if not loaded.is_encoder_decoder and not uses_chat(loaded):
        target = " " + target  # follows "Answer:" as a generated answer would
    ids = list(loaded.tokenizer(target, add_special_tokens=False)["input_ids"])
    if eos:
        eos_id = loaded.tokenizer.eos_token_id
        if eos_id is None:
            raise TrainError("the student's tokenizer has no end-of-sequence token")
        ids.append(eos_id)
    return ids


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]  # decoder-only: aligned with input_ids; encoder-decoder: decoder targets


def build_features(loaded: LoadedModel, source: str, target: str, max_len: int = 256) -> Features:
    """Token ids and labels; the loss sees target tokens (+ EOS) only.

    Decoder-only: prompt + target in one sequence, labels -100 on the prompt. Over ``max_len``
    the prompt loses its first tokens (its question and cue are at the end) and the target
    keeps at least half the budget.
    """
    src, tgt = encode_source(loaded, source), encode_target(loaded, target)
    if loaded.is_encoder_decoder:
        return Features(src[-max_len:], tgt[:max_len])
    tgt = tgt[: max_len - min(len(src), max_len // 2)]
    src = src[len(src) - (max_len - len(tgt)) :] if len(src) + len(tgt) > max_len else src
    return Features(src + tgt, [IGNORE] * len(src) + tgt)


def collate_features(feats: list[Features], pad_id: int, encoder_decoder: bool) -> dict:
    """Right-padded tensors; labels padded with -100 so padding never counts in the loss."""
    n, width = len(feats), max(len(f.input_ids) for f in feats)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lw = max(len(f.labels) for f in feats) if encoder_decoder else width
    labels = torch.full((n, lw), IGNORE, dtype=torch.long)
    for i, f in enumerate(feats):
        ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
        mask[i, : len(f.input_ids)] = 1
        labels[i, : len(f.labels)] = torch.tensor(f.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, epoch), so resumption replays it exactly


class BatchOrder:
    """Micro-batch ``g`` of the whole run -> example indices. Epoch ``e`` is a permutation
    drawn from a generator seeded with (seed, e); the last batch of an epoch may be short."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch, self._perm = -1, None

    def epoch_perm(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm

    def batch(self, g: int) -> list[int]:
        epoch, i = divmod(g, self.per_epoch)
        return self.epoch_perm(epoch)[i * self.batch_size : (i + 1) * self.batch_size]


def total_steps(config: TrainConfig, n_train: int, world: int = 1) -> int:
    if config.steps:
        return int(config.steps)
    epochs = config.epochs or 1
    micro = math.ceil(n_train / config.batch_size) * epochs
    return max(1, math.ceil(micro / (config.grad_accum * world)))


def lr_lambda(config: TrainConfig, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if config.warmup and step < config.warmup:
            return (step + 1) / config.warmup
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - config.warmup))

    return f


# ---------------------------------------------------------------------------------------------
# Checkpoints: model, optimizer, scheduler and RNG states as safetensors + JSON (no pickles)


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    npy = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    run: RunDir, step: int, model, optimizer, scheduler, extra: dict, keep: int = 1
) -> Path:
    """Write ``checkpoints/step-N/`` (staged, then renamed into place)."""
    from safetensors.torch import save_file, save_model

    tmp = run.staging_dir(step)
    save_model(model, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors, opt_meta = {}, {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                opt_meta.setdefault(str(pid), {})[k] = v
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    save_file(tensors, str(tmp / "state.safetensors"))
    sched = scheduler.state_dict()
    sched.pop("lr_lambdas", None)  # plain functions: rebuilt from the config
    meta = {
        "step": step,
        "optimizer": {
            "param_groups": opt["param_groups"],
            "state": opt_meta,
            "ids": [int(p) for p in opt["state"]],
        },
        "scheduler": sched,
        "rng": rng_meta,
        **extra,
    }
    atomic_write_json(tmp / "state.json", meta)
    return run.commit_checkpoint(tmp, step, keep)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; returns the JSON metadata."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    o = meta["optimizer"]
    state = {}
    for pid in o["ids"]:
        st = dict(o["state"].get(str(pid), {}))
        prefix = f"optimizer.{pid}."
        st.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[pid] = st
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in o["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(groups)})
    _set_rng_state(tensors, meta["rng"])
    return meta


# ---------------------------------------------------------------------------------------------
# Training


def _accelerator(bf16: str | bool):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if bf16 == "auto":
        use = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        use = bf16 in (True, "true", "1", "yes", "on", "bf16")
    precision = "bf16" if use else "no"
    cpu = not torch.cuda.is_available()  # lets torchrun / accelerate launch run gloo on CPUs
    try:
        return Accelerator(mixed_precision=precision, cpu=cpu)
    except ValueError:
        # One process may train with and without bf16 (the app): the state is a singleton.
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=precision, cpu=cpu)


def _load_examples(config: TrainConfig):
    from .data import attach_llm_rationales, get_task, load_llm_rationales, load_task, split

    examples = load_task(config.task, config.data, limit=config.limit)
    if config.mode == "dss" and not any(e.llm_rationale for e in examples):
        folder = Path(config.llm_rationales or Path(config.data).parent)
        spec = get_task(config.task)
        attach_llm_rationales(examples, load_llm_rationales(folder, spec.llm_split or "train"))
    return split(examples, config.dev_size, config.seed)


@dataclass
class _Items:
    """Pre-encoded training items per example: the label task and the explain task."""

    predict: list[Features]
    explain: list[Features | None] = field(default_factory=list)


def _encode_items(loaded, examples, config: TrainConfig, rmap) -> _Items:
    items = _Items(predict=[])
    for ex in examples:
        words = rmap.get(ex.id) if rmap is not None else None
        src, tgt = format_example(ex, config.mode, "predict", words, loaded)
        items.predict.append(build_features(loaded, src, tgt, config.max_len))
        if config.mode in MULTITASK:
            has = bool(words) if config.mode == "saliency" else bool(ex.llm_rationale)
            if has:
                src, tgt = format_example(ex, config.mode, "explain", words, loaded)
                items.explain.append(build_features(loaded, src, tgt, config.max_len))
            else:
                items.explain.append(None)
    return items


def _losses(
    model, items: _Items, idx: list[int], config: TrainConfig, pad_id: int, enc_dec: bool, device
) -> dict:
    """Loss of one micro-batch: label loss, plus the rationale loss in multi-task modes."""

    def forward(feats: list[Features]) -> torch.Tensor:
        batch = collate_features(feats, pad_id, enc_dec)
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    label_loss = forward([items.predict[i] for i in idx])
    out = {"loss": label_loss, "label_loss": label_loss, "rationale_loss": None}
    if config.mode in MULTITASK:
        feats = [items.explain[i] for i in idx if items.explain[i] is not None]
        if feats:
            r = forward(feats)
            out["rationale_loss"] = r
            out["loss"] = config.alpha * label_loss + (1 - config.alpha) * r
        else:
            out["loss"] = config.alpha * label_loss
    return out


def run_record(config: TrainConfig, data_hash: str, n_train: int, n_dev: int) -> dict:
    """Everything config.json holds for a training run."""
    return {
        "kind": "train",
        "settings": asdict(config),
        "seed": config.seed,
        "models": {"student": config.student},
        "data": {"path": str(config.data), "sha256": data_hash, "train": n_train, "dev": n_dev},
        "rationales": rationale_source(config.rationales),
    }


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
    emit = progress or (lambda record: None)
    train_ex, dev_ex = _load_examples(config)  # data errors come before any folder exists
    rmap = load_rationale_map(config.rationales) if config.rationales else None
    if rmap is not None and not any(e.id in rmap for e in train_ex):
        raise TrainError(f"no training example has a rationale in {config.rationales}")
    run = RunDir(run_path(config))
    record = run_record(config, data_hash(config.data), len(train_ex), len(dev_ex))
    state = PartialState()  # under `accelerate launch`, only the main process writes files
    run.check(record)  # a finished run or other settings: refuse before loading the model
    accelerator = _accelerator(config.bf16)
    set_seed(config.seed)
    emit({"stage": "loading", "message": f"loading {config.student}", "run_dir": str(run.path)})
    loaded = model_loader(
        config.student, device=accelerator.device, dtype="fp32",
        use_chat_template=config.chat_template,
    )  # fmt: skip
    # The run folder appears only once data, rationales and the model have loaded.
    resumed = run.create(record) if state.is_main_process else True
    state.wait_for_everyone()
    if state.is_main_process:
        run.set_status("running")
    try:
        return _train(config, run, resumed, accelerator, loaded, train_ex, dev_ex, rmap, emit,
                      stop)  # fmt: skip
    except Exception as e:
        if state.is_main_process:
            run.set_status("failed", error=one_line(e))
        raise


def _train(config, run, resumed, accelerator, loaded, train_ex, dev_ex, rmap, emit, stop) -> dict:
    model = loaded.model
    model.train()
    for p in model.parameters():  # load_model/prepare freeze parameters for attribution
        p.requires_grad_(True)
    pad_id = loaded.tokenizer.pad_token_id
    enc_dec = loaded.is_encoder_decoder
    items = _encode_items(loaded, train_ex, config, rmap)

    world, rank = accelerator.num_processes, accelerator.process_index
    total = total_steps(config, len(train_ex), world)
    order = BatchOrder(len(train_ex), config.batch_size, config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total))

    step, elapsed_before = 0, 0.0
    ckpt = run.latest_checkpoint() if resumed else None
    if ckpt:
        meta = load_checkpoint(ckpt[1], model, optimizer, scheduler)
        step, elapsed_before = meta["step"], float(meta.get("elapsed", 0.0))
        if accelerator.is_main_process:
            run.truncate_metrics(step)  # records after the checkpoint are replayed
        emit(
            {
                "stage": "training",
                "message": f"resumed from step {step}",
                "step": step,
                "total": total,
            }
        )
    elif resumed and accelerator.is_main_process:
        run.truncate_metrics(0)  # killed before its first checkpoint: start over
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    def checkpoint(at: int, elapsed: float) -> None:
        if accelerator.is_main_process:
            emit({"stage": "saving", "step": at, "total": total, "message": "checkpoint"})
            save_checkpoint(
                run,
                at,
                accelerator.unwrap_model(model),
                optimizer,
                scheduler,
                {"elapsed": elapsed, "total": total},
                config.keep_checkpoints,
            )
        accelerator.wait_for_everyone()

    t_start, first_step = time.perf_counter(), step
    while step < total:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "label_loss": 0.0, "rationale_loss": 0.0}
        n_rationale, n_examples = 0, 0
        for a in range(config.grad_accum):
            idx = order.batch((step * config.grad_accum + a) * world + rank)
            n_examples += len(idx)
            # Skip the gradient all-reduce on all but the last micro-batch.
            sync = a == config.grad_accum - 1 or world == 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                losses = _losses(model, items, idx, config, pad_id, enc_dec, device)
                accelerator.backward(losses["loss"] / config.grad_accum)
            for k in ("loss", "label_loss"):
                sums[k] += losses[k].item() / config.grad_accum
            if losses["rationale_loss"] is not None:
                sums["rationale_loss"] += losses["rationale_loss"].item()
                n_rationale += 1
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1

        now = time.perf_counter()
        elapsed = elapsed_before + now - t_start
        per_step = (now - t_start) / (step - first_step)
        record = {  # losses of this process's micro-batches (the main one's on multi-GPU)
            "step": step,
            "epoch": round(step * config.grad_accum * world / order.per_epoch, 4),
            "loss": sums["loss"],
            "label_loss": sums["label_loss"],
            "rationale_loss": sums["rationale_loss"] / n_rationale if n_rationale else None,
            "lr": scheduler.get_last_lr()[0],
            "examples_per_s": round(n_examples * world / max(now - t0, 1e-9), 3),
            "elapsed": round(elapsed, 3),
            "eta_s": round(per_step * (total - step), 1),
        }
        if accelerator.is_main_process:
            run.log(record)
        emit({"stage": "training", "total": total, **record})

        if config.eval_every and step % config.eval_every == 0 and step < total:
            dev = _dev_eval(config, loaded, model, accelerator, dev_ex, rmap, emit, step, total)
            if dev is not None and accelerator.is_main_process:
                run.log({"step": step, "dev_accuracy": dev.accuracy, "dev_n": dev.n})
        stopping = stop is not None and stop.is_set()
        if stopping or (config.save_every and step % config.save_every == 0 and step < total):
            checkpoint(step, elapsed)
        if stopping:
            if accelerator.is_main_process:
                run.set_status("stopped", step=step, total=total)
            emit(
                {
                    "stage": "stopped",
                    "step": step,
                    "total": total,
                    "message": f"stopped at step {step} of {total}; resumable",
                }
            )
            return {
                "status": "stopped",
                "run_dir": str(run.path),
                "name": run.name,
                "step": step,
                "steps": step,
                "total": total,
            }

    return _finish(
        config,
        run,
        loaded,
        model,
        accelerator,
        dev_ex,
        rmap,
        emit,
        total,
        elapsed_before + time.perf_counter() - t_start,
        len(train_ex),
    )


def _dev_eval(
    config,
    loaded,
    model,
    accelerator,
    dev_ex,
    rmap,
    emit,
    step,
    total,
    choices: bool = False,
    with_rationales: bool = True,
):
    """Generation accuracy on the dev split (main process), model back in train mode after."""
    from .evaluate import evaluate

    if not dev_ex or not accelerator.is_main_process:
        return None
    emit({"stage": "evaluating", "step": step, "total": total, "message": "dev evaluation"})
    view = dataclasses.replace(loaded, model=accelerator.unwrap_model(model))
    result = evaluate(
        view,
        config.task,
        dev_ex,
        mode=config.mode,
        rationales=rmap if with_rationales else None,
        limit=config.dev_limit,
        batch_size=config.eval_batch_size or config.batch_size,
        max_new_tokens=config.max_new_tokens,
        max_len=config.max_len,
        choices=choices,
    )
    if with_rationales:
        emit({"stage": "training", "step": step, "total": total, "dev_accuracy": result.accuracy})
    return result


def _finish(
    config, run, loaded, model, accelerator, dev_ex, rmap, emit, total, elapsed, n_train
) -> dict:
    """Final dev evaluation, final model as safetensors in ``model/``, summary.json."""
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
        "dev_examples": min(len(dev_ex), config.dev_limit or 10**9),
        "elapsed_s": round(elapsed, 2),
    }
    metrics = [r for r in run.metrics() if "loss" in r]
    if metrics:
        summary["final_loss"] = metrics[-1]["loss"]
    result = _dev_eval(
        config, loaded, model, accelerator, dev_ex, rmap, emit, total, total, choices=True
    )
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
        from .runs import atomic_write_text

        atomic_write_text(run.path / "dev_predictions.jsonl", lines)
        if config.mode == "hint":  # hint words are a crutch: also report without them
            bare = _dev_eval(
                config,
                loaded,
                model,
                accelerator,
                dev_ex,
                rmap,
                emit,
                total,
                total,
                choices=True,
                with_rationales=False,
            )
            summary.update(
                accuracy_no_hint=bare.accuracy, choice_accuracy_no_hint=bare.choice_accuracy
            )
    if accelerator.is_main_process:
        emit({"stage": "saving", "step": total, "total": total, "message": "saving model"})
        tmp = run.path / ".model.tmp"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(run.model_dir, ignore_errors=True)
        tmp.rename(run.model_dir)
        summary["model_dir"] = str(run.model_dir)
        summary["settings"] = asdict(config)
        run.finish(summary)
        run.clean_checkpoints()  # the final model is in model/; checkpoints only served resumes
    accelerator.wait_for_everyone()
    emit(
        {
            "stage": "done",
            "step": total,
            "total": total,
            "message": "finished",
            "run_dir": str(run.path),
        }
    )
    return {"status": "finished", **summary}


__all__ = [
    "MODES",
    "TrainConfig",
    "TrainError",
    "build_features",
    "collate_features",
    "encode_source",
    "encode_target",
    "format_example",
    "load_rationale_map",
    "train",
]
