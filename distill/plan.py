"""An experiment's settings: the :class:`Plan`, its presets and its validation.

:mod:`distill.pipeline` runs a plan; the CLI (``python -m distill experiment``), the bench and
the app build one here. Everything is checked before any model load or folder creation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from explain.errors import KDLensError
from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER

from .config import MAX_EPOCHS, MAX_STEPS
from .data import default_path
from .datasets import datasets_dir
from .modes import MODES
from .rationales import TARGETS
from .tasks import get_task

# Modes whose training needs teacher rationales, as the mode registry declares them.
NEEDS_RATIONALES = tuple(name for name, mode in MODES.items() if mode.needs == "teacher")

# Where the bundled datasets live: <repo>/../shared/datasets, or $KDLENS_DATASETS.


class PlanError(KDLensError):
    """Experiment settings that cannot run (checked before any model load or folder)."""


# ---------------------------------------------------------------------------------------------
# Presets: the one place to tune the experiment's sizes.
#
# cpu: a 2-core CPU, one task in at most ~45 minutes. Measured on such a CPU (issue 8,
#      2026-12-01, quiet): teacher extraction ~2.2 s per example (1.5B Qwen pack, bf16, batch 8),
#      a student step of batch 8 ~1.5 s on e-SNLI (135M SmolLM2, bf16 autocast, fused AdamW,
#      eager attention, no chat template), about twice that in the two-target modes (saliency,
#      dss, random). 3 epochs at lr 1e-4: the dev-split search (bench/results/tune_esnli.jsonl,
#      320 examples, 120 steps) found nothing better than standard at 0.67 e-SNLI dev accuracy
#      (3e-4: 0.66, 2e-4: 0.41, constant lr: 0.61, batch 4: 0.67; 160 examples: chance).
#      320 examples took 49 min 48 s on e-SNLI before eager attention (README), about 44 min
#      after by its rates; 288 leave a margin.
#      Students read the bare prompt (no chat template: 30% fewer tokens); the zero-shot
#      baseline is scored both ways.
#      Then (2026-12-01, same search, 288 examples, seeds 0 and 1): frozen token embeddings
#      turned seed 1's collapse (0.35) into 0.72 and kept seed 0 at 0.64 (lr 2e-4: 0.62 /
#      0.54); a check at seed 2 afterwards: 0.58 frozen, 0.34 trained. 4 epochs gave 0.65 /
#      0.74 but do not fit: a frozen step is only 7-9% faster in the experiment (1.73 and 1.69
#      against 1.86 s at e-SNLI's lengths), so 4 epochs would take the task to ~46.5 minutes.
#      The e-SNLI run at this preset took 39 min 49 s, CQA 41 min 36 s; at seed 1 e-SNLI
#      45 min 18 s (each stage 12-19% slower: this machine's speed varies), CQA 43 min 26 s.
#      Freezing the lowest blocks too (freeze_layers) cut a step but not the learning's cost:
#      15 of 30 blocks, 4 epochs (about 3 epochs' time): 0.62 / 0.59 at seeds 0 and 1.
#      At seed 2 (2026-12-01) e-SNLI took 44 min 59 s, CQA 47 min 02 s: two runs of six over
#      the limit, on slow days (every stage 12-20% slower). So the sizes went down by a
#      ninth, to 256 (e-SNLI) and 208 (CQA): scaling the stages that grow with the examples
#      (extraction, training) in the slowest runs gives ~41 and ~43 minutes, ~36 and ~38 in
#      the fastest. Measured at 256 / 208: e-SNLI 41:56, 39:43, 36:07 (seeds 0-2), CQA
#      40:14 (seed 0). The older tables (README) were made at 288 / 232 and their commands
#      name that size (--train-size). The price, in the same dev search at 256: 0.57 / 0.59 /
#      0.65 at seeds 0-2 (288: 0.64 / 0.72 / 0.58). Evaluating at batch 32 instead of 8 gave
#      the same predictions but saved only a tenth of the evaluation (bench/eval_batch.py).
#      Then (2026-12-01 evening) multi-task students read each example's prompt once (the
#      task marker moved into the cue; distill/features.py): a step of random / dss costs
#      1.09x / 1.16x standard's instead of 1.95x / 2.82x (bench/results/step_cost_shared.json).
#      More epochs help: 5 gave dev 0.63 / 0.71 / 0.74 at seeds 0-2 against 3 epochs' 0.57 /
#      0.59 / 0.65 (same dev search, 256 examples; 0.63 / 0.68 / 0.71 after 4 of the 5). But
#      the e-SNLI experiment at 5 epochs took 45 min 19 s (quiet; training 324 / 386 / 442 /
#      387 s), so the preset trains 4: a fifth less training, ~40 minutes.
# gpu: one H100/H200-class GPU, full training file, bf16 (TrainConfig bf16="auto").
# The cpu preset's training examples per task: e-SNLI's 256 scaled by the student's tokens per
# example (predict + explain pairs, SmolLM2 tokenizer, bare prompts, first 320 records:
# e-SNLI 183, CQA 224, ANLI1 414, SVAMP 255), down to a whole batch of 8, so every task costs
# about the same. Only e-SNLI and CQA were timed (README); other tasks get the smallest size.
CPU_TRAIN_SIZES = {"esnli": 256, "cqa": 208, "anli1": 112, "svamp": 176}

PRESETS: dict[str, dict] = {
    "cpu": {
        "train_size": CPU_TRAIN_SIZES,  # per task (preset_train_size)
        "dev_size": 100,
        "epochs": 4.0,
        "batch_size": 8,
        "lr": 1e-4,
        "extract_batch": 8,
        "dev_limit": 100,
        "train_settings": {
            "warmup": 5,
            "bf16": True,
            "chat_template": False,
            "freeze_embeddings": True,
        },  # fmt: skip
    },
    "gpu": {
        "train_size": None,  # the whole training file
        "dev_size": 500,
        "epochs": 3.0,
        "batch_size": 32,
        "lr": 1e-4,
        "extract_batch": 32,
        "dev_limit": 500,
        "train_settings": {"warmup": 20, "chat_template": False},
    },
}


def preset_train_size(preset: str, task: str | None) -> int | None:
    """A preset's training examples for ``task`` (a preset may size them per task)."""
    size = PRESETS[preset].get("train_size")
    if isinstance(size, dict):
        return size.get(task) if task in size else min(size.values())
    return size


def default_modes() -> list[str]:
    """The comparison's modes: standard, saliency, dss and the random-words control once the
    training-mode registry has it (``hint`` only when asked)."""
    return [m for m in ("standard", "saliency", "dss", "random") if m in MODES]


def default_data(task: str) -> str:
    return str(default_path(task, datasets_dir()))


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    """Every setting of one experiment; ``out`` is the experiment folder."""

    task: str
    data: str
    out: str
    teacher: str = DEFAULT_TEACHER
    student: str = DEFAULT_STUDENT
    modes: list[str] = field(default_factory=default_modes)
    train_size: int | None = 160  # training examples (None: every record but the dev split)
    dev_size: int = 100  # dev examples carved from the data file (seeded)
    test_data: str | None = None  # final accuracy on this file (no part in training)
    test_limit: int | None = None
    top_k: int = 5
    method: str = "saliency"
    target: str = "generated"  # rationale target; "gold" is for analysis only
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    epochs: float | None = 3.0
    batch_size: int = 8
    lr: float = 1e-4
    extract_batch: int = 4
    eval_batch: int | None = None  # evaluation batch; None: batch_size
    gpu_sizes: dict | None = None  # the gpu preset's sizes from the GPU's memory, for the record
    max_new_tokens: int | None = None  # generation cap; None: the task's longest answer + 8
    faithfulness_limit: int | None = 0  # ERASER figures on the first N extracted examples
    dev_limit: int | None = 100
    zero_shot: bool = True  # evaluate the untrained student too (the baseline to beat)
    preset: str | None = None
    train_settings: dict = field(default_factory=dict)  # further TrainConfig fields
    explain_settings: dict = field(default_factory=dict)  # further explain_batch settings

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def limit(self) -> int | None:
        """Records read from the data file: train plus dev."""
        return None if self.train_size is None else self.train_size + self.dev_size

    @property
    def needs_rationales(self) -> bool:
        return any(m in NEEDS_RATIONALES for m in self.modes)

    def run_dir(self, stage: str) -> Path:
        return Path(self.out) / stage


def make_plan(task: str, out: str, preset: str | None = None, **overrides) -> Plan:
    """A plan from a preset's sizes, then explicit settings (None values are ignored)."""
    if preset is not None and preset not in PRESETS:
        raise PlanError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    kw = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS.get(preset or "", {}).items()
    }
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "train_settings":  # explicit settings add to the preset's
            v = {**kw.get(k, {}), **v}
        kw[k] = v
    if isinstance(kw.get("train_size"), dict):  # the preset's size for this task
        kw["train_size"] = preset_train_size(preset, task)
    kw.setdefault("data", default_data(task))
    if preset == "gpu":
        _gpu_sizes(kw, overrides)
    return Plan(task=task, out=str(out), preset=preset, **kw)


def _gpu_sizes(kw: dict, overrides: dict) -> None:
    """The gpu preset's batch sizes from the GPU's memory (:mod:`distill.gpu`): the effective
    training batch stays ``batch_size`` (split into micro-batches and accumulation); batch
    sizes set explicitly are kept. Without a GPU the preset's fixed sizes apply."""
    from .gpu import detect_gpu_batch_sizes

    sizes = detect_gpu_batch_sizes(
        kw.get("student") or DEFAULT_STUDENT, kw.get("teacher") or None, kw["batch_size"]
    )
    if sizes is None:
        return
    kw["gpu_sizes"] = sizes.to_dict()
    if overrides.get("extract_batch") is None:
        kw["extract_batch"] = sizes.extract
    if overrides.get("eval_batch") is None:
        kw["eval_batch"] = sizes.eval
    ts = kw.setdefault("train_settings", {})
    if "batch_size" not in ts and "grad_accum" not in ts:
        ts.update(batch_size=sizes.train, grad_accum=sizes.grad_accum)
    ts.setdefault("eval_batch_size", kw["eval_batch"])


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise PlanError(f"{name} must be at least 1, got {value!r}")


def validate(plan: Plan) -> None:
    """Refuse a plan that cannot run, before any model load or folder creation."""
    import dataclasses

    from explain.attr import METHODS

    from .config import TrainConfig

    get_task(plan.task)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(plan.train_settings) - known)
    if unknown:
        raise PlanError(f"unknown training setting(s) {', '.join(unknown)}")
    if not plan.modes:
        raise PlanError(f"pick at least one mode: {', '.join(MODES)}")
    for m in plan.modes:
        if m not in MODES:
            raise PlanError(f"unknown mode {m!r}; use one of {', '.join(MODES)}")
    if len(set(plan.modes)) != len(plan.modes):
        raise PlanError("a mode is listed twice")
    if plan.target not in TARGETS:
        raise PlanError(f"target must be one of {', '.join(TARGETS)}, got {plan.target!r}")
    if plan.target == "gold" and "hint" in plan.modes:
        # Gold-target words as hints at evaluation leak the answer (issue 7, defect 3).
        raise PlanError(
            "mode hint needs rationales of the teacher's own answer: use target generated"
        )
    if plan.method not in METHODS:
        raise PlanError(f"unknown attribution method {plan.method!r}")
    _positive("train size", plan.train_size, allow_none=True)
    _positive("dev size", plan.dev_size)
    _positive("eval batch", plan.eval_batch, allow_none=True)
    for name in ("top_k", "batch_size", "extract_batch"):
        _positive(name.replace("_", " "), getattr(plan, name))
    _positive("max new tokens", plan.max_new_tokens, allow_none=True)
    _positive("steps", plan.steps, allow_none=True)
    _positive("dev limit", plan.dev_limit, allow_none=True)
    _positive("test limit", plan.test_limit, allow_none=True)
    if plan.epochs is not None and not plan.epochs > 0:
        raise PlanError(f"epochs must be positive, got {plan.epochs!r}")
    if plan.epochs is not None and plan.epochs > MAX_EPOCHS:
        raise PlanError(f"epochs must be at most {MAX_EPOCHS:,}, got {plan.epochs:g}")
    if plan.steps is not None and plan.steps > MAX_STEPS:
        raise PlanError(f"steps must be at most {MAX_STEPS:,}, got {plan.steps:,}")
    if not (isinstance(plan.lr, int | float) and 0 < plan.lr < float("inf")):
        raise PlanError(f"learning rate must be a positive number, got {plan.lr!r}")
    if not plan.seeds or len(set(plan.seeds)) != len(plan.seeds):
        raise PlanError("give one or more distinct seeds")
    if plan.needs_rationales and not (plan.teacher or "").strip():
        raise PlanError(f"modes {', '.join(NEEDS_RATIONALES)} need a teacher model")
    if not (plan.student or "").strip():
        raise PlanError("pick a student model")
    if "dss" in plan.modes and not (Path(plan.data).parent / "llm").is_dir():
        raise PlanError("mode dss needs the data's LLM rationales (llm/ next to the data file)")
    if plan.test_data and Path(plan.test_data).resolve() == Path(plan.data).resolve():
        raise PlanError("the test file must not be the training data file")


__all__ = [
    "NEEDS_RATIONALES",
    "PRESETS",
    "Plan",
    "PlanError",
    "default_data",
    "default_modes",
    "make_plan",
    "validate",
]
