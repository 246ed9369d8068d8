"""Task registry: everything task-specific lives in one :class:`TaskSpec` entry.

A spec names the explain template that renders the task input, the input fields the app
shows, the label kind (how a record's label is read and how a prediction is scored), the
closed answer set when there is one, the metrics that apply, the default data file, the split
of the PaLM rationale files and the human-rationale column. The CLIs' ``--task`` choices
(:func:`task_names`), evaluation, extraction and the app all read it.

Add a task
----------
One new entry plus its tests. For a task whose label is a choice among per-record options,
a label word from a fixed set, or an arithmetic answer, an existing label kind does all the
reading and scoring::

    from distill.tasks import TaskSpec, register_task

    register_task(TaskSpec(
        name="sentiment",
        template="sentiment",              # an explain template (register_template)
        label_kind="label",                # 'choice' | 'label' | 'nli' | 'equation'
        input_fields=("text",),            # record columns -> template fields, shown by the app
        labels=("positive", "negative"),   # the closed answer set ('label' kind)
        data_file="sentiment/train.jsonl", # default file under the datasets folder
        description="Sentiment: one sentence, positive or negative",
    ))

Then ``load_task("sentiment", path)`` reads records ``{"text": ..., "label": "positive"}`` (or the
label's index), ``score_answer("sentiment", prediction, example)`` scores generations, and
evaluation ranks the labels by likelihood (``choice_accuracy``). Tests: one record loads, a
right and a wrong prediction score as such (see ``tests/test_tasks.py``). A task with its own
answer form passes ``answer_parser`` / ``gold_normalizer`` instead of a new label kind.

Label kinds and their answer parsing
------------------------------------
- ``choice``: the record holds ``choices`` (a list, or "a|b|c" in CSV) and ``answer`` (a
  choice's text or letter). A prediction names an option by its text or by a clear letter form
  (:func:`distill.metrics.parse_letter`); the canonical answer is the option's normalised text.
- ``label`` / ``nli``: a fixed label set (``labels``); a prediction's canonical answer is the
  one label it asserts (:func:`distill.metrics.parse_label`), None when negated or ambiguous.
- ``equation``: the gold is an arithmetic expression such as ``( 12.0 / 3.0 )``; a prediction's
  canonical answer is the value of its last number or expression; values compare within 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from explain.templates import NLI_LABELS

from . import metrics as M

# Metric names a task may declare (evaluation computes the ones that apply):
# accuracy: exact match of the generated answer; choice_accuracy: options ranked by
# length-normalised log-likelihood (lm-eval's acc_norm); choice_accuracy_sum: by summed
# log-likelihood (acc); hit: a rationale word is in the gold answer (overlap report).
METRICS = ("accuracy", "choice_accuracy", "choice_accuracy_sum", "hit")


@dataclass(frozen=True)
class AnswerKind:
    """How a label kind turns predictions and gold labels into comparable canonical answers."""

    name: str
    parse: Callable[[str, list[str] | None], Any]  # (prediction, options) -> canonical | None
    gold: Callable[[str], Any]  # gold label -> canonical
    same: Callable[[Any, Any], bool]
    has_options: bool  # a closed answer set that choice scoring can rank


def _choice_parse(prediction: str, options: list[str] | None) -> str | None:
    idx = M.parse_choice(prediction, options or [])
    return None if idx is None else M.normalize(options[idx])


def _label_parse(prediction: str, options: list[str] | None) -> str | None:
    return M.parse_label(prediction, options or NLI_LABELS)


def _eq(a: Any, b: Any) -> bool:
    return a == b


def _gold_number(label: str) -> float | None:
    value = M.safe_eval(label)
    return value if value is not None else M.parse_number(label)


def _same_number(a: float, b: float) -> bool:
    return abs(a - b) < 1e-4


ANSWER_KINDS: dict[str, AnswerKind] = {
    k.name: k
    for k in (
        AnswerKind("choice", _choice_parse, M.normalize, _eq, True),
        AnswerKind("label", _label_parse, M.normalize, _eq, True),
        AnswerKind("nli", _label_parse, M.normalize, _eq, True),  # 'label' with NLI_LABELS
        AnswerKind("equation", lambda p, _o: M.parse_number(p), _gold_number, _same_number, False),
    )
}


@dataclass
class TaskSpec:
    name: str
    template: str  # explain template name
    label_kind: str  # a key of ANSWER_KINDS: 'choice' | 'label' | 'nli' | 'equation'
    rationale_field: str | None = None  # column holding the human rationale
    data_file: str | None = None  # default file, relative to the datasets folder
    llm_split: str | None = None  # <task>/llm/<llm_split>_CoT_<i>.json
    description: str = ""
    input_fields: tuple[str, ...] = ()  # template fields the record provides and the app shows
    labels: tuple[str, ...] | None = None  # fixed answer set ('label'/'nli' kinds)
    metrics: tuple[str, ...] | None = None  # None: from the label kind (see __post_init__)
    answer_parser: Callable[[str, list[str] | None], Any] | None = None  # overrides the kind's
    gold_normalizer: Callable[[str], Any] | None = None  # overrides the kind's

    def __post_init__(self) -> None:
        if self.label_kind not in ANSWER_KINDS:
            raise ValueError(
                f"task {self.name!r}: unknown label kind {self.label_kind!r}; "
                f"use one of {', '.join(ANSWER_KINDS)}"
            )
        if self.label_kind == "nli" and self.labels is None:
            self.labels = tuple(NLI_LABELS)
        if self.label_kind == "label" and not self.labels:
            raise ValueError(f"task {self.name!r}: the 'label' kind needs its labels")
        if self.metrics is None:
            kind = self.kind
            self.metrics = ("accuracy",) + (
                ("choice_accuracy", "choice_accuracy_sum") if kind.has_options else ()
            )
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown metrics {sorted(unknown)}")

    @property
    def kind(self) -> AnswerKind:
        return ANSWER_KINDS[self.label_kind]

    def options(self, fields: dict) -> list[str] | None:
        """The closed answer set for an input: its choices, the fixed labels, or None."""
        if self.label_kind == "choice":
            choices = fields.get("choices")
            if isinstance(choices, str):  # the app's "a|b|c"
                choices = [c.strip() for c in choices.split("|") if c.strip()]
            return list(choices) if choices else None
        return list(self.labels) if self.labels else None

    def parse_answer(self, prediction: str, options: list[str] | None = None) -> Any:
        """A prediction's canonical answer (option text, label word, number) or None."""
        parser = self.answer_parser or self.kind.parse
        return parser(str(prediction or ""), options)

    def normalize_gold(self, label: str) -> Any:
        return (self.gold_normalizer or self.kind.gold)(label)

    def is_correct(self, prediction: str, label: str, options: list[str] | None = None) -> bool:
        pred = self.parse_answer(prediction, options)
        gold = self.normalize_gold(label)
        return pred is not None and gold is not None and self.kind.same(pred, gold)


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


def get_task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except KeyError:
        from .data import DataError  # data imports this module; DataError stays its home

        raise DataError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}") from None


def task_names() -> list[str]:
    """Registered task names, for ``--task`` choices and the app's lists."""
    return list(TASKS)


_CHOICE_METRICS = ("accuracy", "choice_accuracy", "choice_accuracy_sum", "hit")
_NLI_METRICS = ("accuracy", "choice_accuracy", "choice_accuracy_sum")

for _spec in (
    TaskSpec("cqa", "cqa", "choice", "extractive_explanation", "cqa/cqa_train.json", "train",
             "CommonsenseQA: question and five choices", ("question", "choices"),
             metrics=_CHOICE_METRICS),
    TaskSpec("esnli", "nli", "nli", "explanation_1", "esnli/esnli_valid.json", "valid",
             "e-SNLI: premise and hypothesis", ("premise", "hypothesis"), metrics=_NLI_METRICS),
    TaskSpec("anli1", "nli", "nli", "reason", "anli1/anli1_valid.json", "valid",
             "ANLI round 1: premise and hypothesis", ("premise", "hypothesis"),
             metrics=_NLI_METRICS),
    TaskSpec("svamp", "svamp", "equation", None, "svamp/svamp_train.json", "train",
             "SVAMP: math word problem, answer an equation", ("body", "question"),
             metrics=("accuracy",)),
):  # fmt: skip
    register_task(_spec)


__all__ = [
    "ANSWER_KINDS",
    "METRICS",
    "AnswerKind",
    "TASKS",
    "TaskSpec",
    "get_task",
    "register_task",
    "task_names",
]
