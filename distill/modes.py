"""Training modes, registered by name: what a student trains on and how its losses combine.

A mode turns one example (plus, when it needs them, rationale words) into training pairs: the
``predict`` pair (input -> label) and, for multi-task modes, an ``explain`` pair (input ->
rationale). Each pair carries a loss weight; the trainer takes a per-token mean over the
effective batch for each kind and sums ``weight * mean`` (see :mod:`distill.train`).

Add a mode: subclass :class:`TrainingMode`, set ``name``/``description``/``needs``, implement
``explain_target`` (multi-task) or ``hint`` (input-side), decorate with :func:`register`, and
add its tests. The CLI's ``--mode`` choices, the app and the experiment read :data:`MODES`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from explain.errors import KDLensError
from explain.templates import get_template
from explain.words import split_words

# Where a multi-task student's task marker stands (TrainConfig.task_marker): "cue", the
# prompt's last line, or "prefix", before the input (distilling-step-by-step's T5 recipe).
TASK_MARKERS = ("cue", "prefix")


class ModeError(KDLensError):
    """An unknown mode, or an example a mode cannot train on."""


@dataclass
class Pair:
    """One (source, target) training task of an example."""

    kind: str  # "predict" (label) or "explain" (rationale)
    prefix: str | None  # a marker put before the input (None: the cue tells the tasks apart)
    hint: list[str] | None  # words appended to the input (the hint mode)
    target: str
    weight: float


class TrainingMode:
    """One way to train a student. ``needs``: which rationales it reads, if any:
    ``"teacher"`` (an extraction run), ``"llm"`` (the PaLM rationales of the data files)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[str | None] = None
    multitask: ClassVar[bool] = False  # an explain pair beside the predict pair, alpha-weighted
    uses_hints: ClassVar[bool] = False  # rationale words in the input, at training and inference
    # Reads teacher rationales when an experiment has them, only to match their lengths.
    matches_rationale_length: ClassVar[bool] = False

    def explain_target(self, example, words: list[str] | None, seed: int) -> str | None:
        """The explain task's target for ``example``, or None when it has none."""
        return None

    def hint(self, words: list[str] | None) -> list[str] | None:
        return list(words) if self.uses_hints and words else None

    def prefix(self, kind: str, marker: str = "cue") -> str | None:
        """The marker put before the input of ``kind``'s pairs: with ``marker="cue"`` none,
        the cue at the prompt's end ("Answer:" / "Explanation:") tells the tasks apart, so a
        multi-task example's pairs share their whole prompt, a decoder-only student reads it
        once per example (:func:`distill.features.collate_groups`) and every mode answers the
        standard prompt; with ``"prefix"`` a multi-task mode's ``predict:`` / ``explain:``."""
        return kind if self.multitask and marker == "prefix" else None

    def pairs(
        self,
        example,
        words: list[str] | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        marker: str = "cue",
    ) -> list[Pair]:
        """Training pairs of one example. An example without an explain target keeps its
        label loss at full weight (it is not down-weighted by ``alpha``)."""
        explain = self.explain_target(example, words, seed) if self.multitask else None
        label_w = alpha if explain else 1.0
        hint = self.hint(words)
        out = [Pair("predict", self.prefix("predict", marker), hint, example.label, label_w)]
        if explain:
            out.append(Pair("explain", self.prefix("explain", marker), None, explain, 1 - alpha))
        return out

    def inference(
        self, words: list[str] | None = None, marker: str = "cue"
    ) -> tuple[str | None, list[str] | None]:
        """(prefix, hint words) of the prompt the student answers at evaluation."""
        return self.prefix("predict", marker), self.hint(words)


MODES: dict[str, TrainingMode] = {}


def register(cls: type[TrainingMode]) -> type[TrainingMode]:
    MODES[cls.name] = cls()
    return cls


def get_mode(name: str) -> TrainingMode:
    try:
        return MODES[name]
    except KeyError:
        raise ModeError(f"unknown mode {name!r}; use one of {', '.join(MODES)}") from None


def mode_names() -> list[str]:
    return list(MODES)


def reads_rationales(name: str, available: bool = True) -> bool:
    """Whether mode ``name`` is given the teacher's rationales (when ``available``)."""
    mode = get_mode(name)
    return mode.needs == "teacher" or (available and mode.matches_rationale_length)


@register
class Standard(TrainingMode):
    name = "standard"
    description = "fine-tuning on labels only: input -> label"


@register
class Saliency(TrainingMode):
    name = "saliency"
    description = "the paper: multi-task, label + the teacher's top-k saliency words"
    needs = "teacher"
    multitask = True

    def explain_target(self, example, words, seed):
        return " ".join(words) if words else None


@register
class DSS(TrainingMode):
    name = "dss"
    description = "distilling step-by-step: multi-task, label + the PaLM free-text rationale"
    needs = "llm"
    multitask = True

    def explain_target(self, example, words, seed):
        text = " ".join(str(example.llm_rationale or "").split())
        return text or None


def input_words(example) -> list[str]:
    """The task-input words of an example (no template text, no punctuation), in order."""
    from .tasks import get_task

    prompt = get_template(get_task(example.task).template).render(example.fields)
    out = []
    for a, b in prompt.input_spans:
        for s, e in split_words(prompt.text[a:b]):
            w = prompt.text[a + s : a + e]
            if any(ch.isalnum() for ch in w):
                out.append(w)
    return out


@register
class RandomWords(TrainingMode):
    """The control: the saliency recipe with k task-input words drawn at random (seeded by
    the run seed and the example id). With teacher rationales given, each example draws as
    many words as its saliency rationale has, so both modes see the same length distribution."""

    name = "random"
    description = "control: multi-task, label + k random task-input words"
    multitask = True
    matches_rationale_length = True
    default_k = 5

    def explain_target(self, example, words, seed):
        pool = input_words(example)
        k = min(len(words) if words else self.default_k, len(pool))
        if k == 0:
            return None
        rng = random.Random(f"{seed}:{example.id}")
        return " ".join(pool[i] for i in sorted(rng.sample(range(len(pool)), k)))


@register
class Hint(TrainingMode):
    name = "hint"
    description = "rationale words appended to the input (Hint: ...) -> label"
    needs = "teacher"
    uses_hints = True


__all__ = [
    "MODES",
    "TASK_MARKERS",
    "ModeError",
    "Pair",
    "TrainingMode",
    "get_mode",
    "input_words",
    "mode_names",
    "reads_rationales",
    "register",
]
