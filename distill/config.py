"""Training settings, the run record, and the schedule: batch order and learning rate.

The batch order is a pure function of (seed, epoch), so a resumed run replays it exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch

from explain.errors import KDLensError

from .modes import TASK_MARKERS, ModeError, get_mode
from .rationales import read_meta
from .runs import runs_root, safe_run_dir

# Beyond these a typo (``--epochs 1e9``) would run for ever: refused with the limit.
MAX_EPOCHS = 1000
MAX_STEPS = 10_000_000


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
    # Batches cut by length within runs of this many (less padding, ~10% faster at e-SNLI's
    # lengths); 0 = off, the default: where length follows the label (e-SNLI's neutral
    # hypotheses are 1.5 words longer) such batches skew by label.
    length_groups: int = 0
    out: str = ""  # run folder: a name under runs_root(), or a path
    bf16: str | bool = "auto"  # auto: bf16 mixed precision on GPUs that support it
    max_new_tokens: int | None = None  # generation cap; default from the task's answers
    chat_template: bool = True  # wrap decoder-only prompts in the student's chat template
    llm_rationales: str | None = None  # dss: folder holding llm/; default the data's folder
    eval_batch_size: int | None = None
    # Keep the token embeddings (and an output head tied to them) fixed: a few hundred
    # examples do not need a new vocabulary, and the cpu preset's dev search found training
    # steadier so (distill/plan.py); a CPU step is also ~7% faster.
    freeze_embeddings: bool = False
    # Keep the lowest N transformer blocks fixed too (N > 0 implies freeze_embeddings): with
    # nothing trainable below them, backward stops at block N, so a step costs less.
    freeze_layers: int = 0
    # Where a multi-task student's task marker stands: "cue", the prompt's last line (the
    # explain task's "Explanation:"), so an example's tasks share their prompt and a
    # decoder-only student reads it once; or "prefix", distilling-step-by-step's "predict:" /
    # "explain:" before the input (runs recorded before this field existed used it).
    task_marker: str = "cue"

    def __post_init__(self) -> None:
        if self.freeze_layers:  # the record then says what was frozen
            self.freeze_embeddings = True

    def validate(self) -> None:
        try:
            mode = get_mode(self.mode)
        except ModeError as e:
            raise TrainError(str(e)) from None
        if mode.needs == "teacher" and not self.rationales:
            raise TrainError(f"mode {self.mode!r} needs rationales: give an extraction run")
        for name in ("alpha", "lr", "weight_decay", "epochs"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(float(v)):
                raise TrainError(f"{name} must be a finite number, got {v}")
        if not 0.0 <= self.alpha <= 1.0:
            raise TrainError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("batch_size", "grad_accum", "max_len", "max_new_tokens"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise TrainError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise TrainError(f"steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise TrainError(f"epochs must be positive, got {self.epochs}")
        if self.epochs is not None and self.epochs > MAX_EPOCHS:
            raise TrainError(f"epochs must be at most {MAX_EPOCHS:,}, got {self.epochs:g}")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise TrainError(f"steps must be at most {MAX_STEPS:,}, got {self.steps:,}")
        if self.lr <= 0:
            raise TrainError(f"learning rate must be positive, got {self.lr}")
        if self.task_marker not in TASK_MARKERS:
            raise TrainError(f"unknown task marker {self.task_marker!r}; use cue or prefix")
        if self.schedule not in ("linear", "constant"):
            raise TrainError(f"unknown schedule {self.schedule!r}; use linear or constant")
        if self.warmup < 0 or self.eval_every < 0 or self.save_every < 0:
            raise TrainError("warmup, eval_every and save_every must not be negative")
        if self.freeze_layers < 0:
            raise TrainError(f"freeze_layers must not be negative, got {self.freeze_layers}")
        if self.length_groups < 0:
            raise TrainError(f"length_groups must not be negative, got {self.length_groups}")


def run_path(config: TrainConfig) -> Path:
    """The run folder: a bare name goes under :func:`runs_root`; a path is taken as is."""
    out = config.out or f"{config.mode}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in out or "\\" in out:
        return Path(out).expanduser()
    return safe_run_dir(runs_root(), out)


# ---------------------------------------------------------------------------------------------
# Rationales


def rationale_source(path: str | Path | None) -> dict | None:
    """Settings of the extraction run the rationales came from, for the record."""
    if not path:
        return None
    from .data import data_hash

    meta = read_meta(path)
    settings = {k: v for k, v in meta.settings.items() if k not in ("versions", "created")}
    return {"path": str(path), "sha256": data_hash(meta.path), "target": meta.target,
            "settings": settings, "models": settings.get("models")}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, epoch), so resumption replays it exactly


class BatchOrder:
    """Micro-batch ``g`` of the whole run -> example indices. Epoch ``e`` is a permutation
    drawn from a generator seeded with (seed, e); the last batch of an epoch may be short.

    With ``lengths`` and ``groups`` > 1, each run of ``groups`` batches of the permutation is
    re-cut by length (as Hugging Face's ``group_by_length``), so a batch holds examples of
    similar length and pads less; the batches are then shuffled with the same generator.
    Still a pure function of (seed, epoch), so a resumed run replays the same batches.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int,
        lengths: list[int] | None = None, groups: int = 0,
    ) -> None:  # fmt: skip
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.lengths, self.groups = lengths, groups
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch, self._batches = -1, None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            bs = self.batch_size
            if self.lengths is None or self.groups < 2:
                batches = [perm[i : i + bs] for i in range(0, self.n, bs)]
            else:
                span = bs * self.groups
                batches = []
                for s in range(0, self.n, span):
                    # stable sort: ties keep the permutation's (random) order
                    chunk = sorted(perm[s : s + span], key=lambda i: -self.lengths[i])
                    batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
                shuffle = torch.randperm(len(batches), generator=g).tolist()
                batches = [batches[i] for i in shuffle]
            self._epoch, self._batches = epoch, batches
        return self._batches

    def batch(self, g: int) -> list[int]:
        epoch, i = divmod(g, self.per_epoch)
        return self.epoch_batches(epoch)[i]


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


# Fields whose default is not what runs recorded before the field existed did.
RECORDED_BEFORE = {"task_marker": "prefix"}


def record_defaults() -> dict:
    """What a run record made before a TrainConfig field existed is read as having: that
    field's default, or what such runs did where the default changed (RECORDED_BEFORE), so a
    run still resumes and is still reused when its settings match, and only then."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return {"settings": {**defaults, **RECORDED_BEFORE}}


def recorded_settings(record: dict | None) -> dict:
    """A run record's settings, with what it lacks read as :func:`record_defaults` says."""
    return {**record_defaults()["settings"], **((record or {}).get("settings") or {})}


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
