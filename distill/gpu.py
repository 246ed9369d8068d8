"""Batch sizes of the ``gpu`` preset, chosen from the GPU's memory and the models' sizes.

:func:`gpu_batch_sizes` is pure (numbers in, numbers out) so it is tested without a GPU;
:func:`detect_gpu_batch_sizes` feeds it the first CUDA device's memory and the parameter
counts read from the models' safetensors headers (no weights are loaded).

The memory model is deliberately coarse and errs on the side of fitting: bytes per parameter
for the fixed state of each stage, plus bytes per parameter per example for its activations.
The per-example figures were derived for the default packs:

- training, SmolLM2-135M (30 layers, hidden 576, vocab 49k) at ``max_len`` 256 under bf16
  autocast: about 34 B x hidden x layers x tokens of activations (~150 MB) plus the fp32 logits
  for the loss (~100 MB), i.e. ~1.9 B per parameter per example -> :data:`TRAIN_ACT_BYTES` 2.0;
- extraction, Qwen2.5-1.5B (28 layers, hidden 1536, vocab 152k) with one forward and one
  backward to the input embeddings on prompts of up to 512 tokens: ~0.75 GB of activations plus
  the logits, ~0.7 B per parameter per example -> :data:`EXTRACT_ACT_BYTES` 1.0;
- evaluation: no-grad forwards and a small KV cache -> :data:`EVAL_ACT_BYTES` 0.25.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1024**3

# Never planned on: the CUDA context, cuBLAS workspaces and allocator fragmentation.
CUDA_RESERVE_BYTES = 2 * GIB
USABLE_FRACTION = 0.8  # of what is left after the reserve (headroom for length outliers)

# Fixed bytes per parameter of each stage.
TRAIN_STATE_BYTES = 16.0  # fp32 weights + gradients + AdamW's two moments (train loads fp32)
TEACHER_WEIGHT_BYTES = 2.0  # the teacher in bf16 (load_model's "auto" for >1B on a GPU)
EVAL_WEIGHT_BYTES = 4.0  # the student in fp32 (load_model's "auto" below 1B parameters)

# Activation bytes per parameter per example (see the module docstring).
TRAIN_ACT_BYTES = 2.0
EXTRACT_ACT_BYTES = 1.0
EVAL_ACT_BYTES = 0.25

# Upper limits: past these a larger batch buys little speed and more padding.
EXTRACT_CAP = 128
EVAL_CAP = 256
# The training recipe's batch (optimizer steps and the learning rate were chosen for it): memory
# only decides how it is split into micro-batches, never the effective batch itself.
EFFECTIVE_TRAIN_BATCH = 32


@dataclass(frozen=True)
class GpuBatchSizes:
    """Batch sizes for one GPU: ``train`` x ``grad_accum`` is the recipe's effective batch."""

    train: int  # training micro-batch per optimizer step
    grad_accum: int  # micro-batches per optimizer step
    extract: int  # teacher extraction batch (generation + attribution)
    eval: int  # student evaluation batch (generation + option scoring)
    usable_bytes: int  # the memory the sizes were planned for

    @property
    def effective_train(self) -> int:
        return self.train * self.grad_accum

    def to_dict(self) -> dict:
        return asdict(self)


def _fit(usable: float, fixed: float, per_example: float) -> int:
    """How many examples fit next to ``fixed`` bytes (0 when not even one does)."""
    if per_example <= 0:
        return 1 << 30
    return max(0, int((usable - fixed) // per_example))


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def gpu_batch_sizes(
    total_bytes: int,
    student_params: int,
    teacher_params: int,
    effective_train: int = EFFECTIVE_TRAIN_BATCH,
) -> GpuBatchSizes:
    """Batch sizes for a GPU of ``total_bytes`` memory: never below 1, non-decreasing in memory.

    Extraction and evaluation batches are the largest powers of two that fit (capped at
    :data:`EXTRACT_CAP` and :data:`EVAL_CAP`). Training keeps the effective batch
    ``effective_train`` and takes the largest micro-batch dividing it that fits; the rest is
    gradient accumulation, so the recipe is the same on every GPU.
    """
    for name, value in (("total_bytes", total_bytes), ("effective_train", effective_train)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("student_params", student_params), ("teacher_params", teacher_params)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    usable = max(0.0, (total_bytes - CUDA_RESERVE_BYTES) * USABLE_FRACTION)
    s, t = float(student_params), float(teacher_params)

    fit = _fit(usable, TRAIN_STATE_BYTES * s, TRAIN_ACT_BYTES * s)
    train = max(d for d in range(1, effective_train + 1) if effective_train % d == 0 and
                (d <= fit or d == 1))  # fmt: skip
    extract = _pow2_floor(min(EXTRACT_CAP, _fit(usable, TEACHER_WEIGHT_BYTES * t,
                                                 EXTRACT_ACT_BYTES * t)))  # fmt: skip
    evaluate = _pow2_floor(min(EVAL_CAP, _fit(usable, EVAL_WEIGHT_BYTES * s, EVAL_ACT_BYTES * s)))
    return GpuBatchSizes(
        train=train,
        grad_accum=effective_train // train,
        extract=extract,
        eval=evaluate,
        usable_bytes=int(usable),
    )


# ---------------------------------------------------------------------------------------------
# The machine and the models (not pure)


def safetensors_params(folder: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files, from their headers alone
    (the weights are never read); None when the folder holds none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def spec_params(spec: str) -> int | None:
    """Parameter count of a pack (already fetched) or a local model folder; None otherwise
    (nothing is fetched or downloaded to find out)."""
    from explain import packs

    if spec in packs.PACKS:
        folder = packs.pack_dir(spec) / "model"
    else:
        folder = Path(spec).expanduser()
    return safetensors_params(folder) if folder.is_dir() else None


def detect_gpu_batch_sizes(
    student: str, teacher: str | None, effective_train: int = EFFECTIVE_TRAIN_BATCH
) -> GpuBatchSizes | None:
    """The sizes for the first CUDA device and these models; None without a GPU or when a
    model's size cannot be read locally (the preset's fixed sizes then apply)."""
    import torch

    if not torch.cuda.is_available():
        return None
    s = spec_params(student)
    t = spec_params(teacher) if teacher else 0
    if s is None or t is None:
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    return gpu_batch_sizes(total, s, t, effective_train)


__all__ = [
    "GpuBatchSizes",
    "detect_gpu_batch_sizes",
    "gpu_batch_sizes",
    "safetensors_params",
    "spec_params",
]
