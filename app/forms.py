"""The task-input form shared by Explain and Compare: input kinds, fields, demo examples."""

from __future__ import annotations

import re

import gradio as gr

from explain.errors import InputError, KDLensError
from explain.templates import get_template

from .common import error_md, shorten

# Input kinds shown in the UI -> explain template names.
INPUT_KINDS: dict[str, str] = {
    "Free text": "free",
    "Multiple choice": "cqa",
    "Premise / hypothesis": "nli",
    "Math word problem": "svamp",
}
KIND_OF_TEMPLATE = {v: k for k, v in INPUT_KINDS.items()}
KINDS = list(INPUT_KINDS)
TASK_KINDS = KINDS[1:]  # Compare needs a task format, not free text


def parse_choices(text: str | list | None) -> list[str]:
    """Choices typed as "a | b | c" or one per line."""
    if isinstance(text, list):
        return [str(c).strip() for c in text if str(c).strip()]
    if text is not None and not isinstance(text, str):
        raise InputError(f"choices must be text; got {type(text).__name__}")
    parts = re.split(r"\s*\|\s*|\n", text or "")
    return [p.strip() for p in parts if p.strip()]


def text(value, name: str) -> str:
    """A text field's value (the API may send anything else)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text; got {type(value).__name__}")
    return value


def task_fields(
    kind: str,
    question: str = "",
    choices: str = "",
    premise: str = "",
    hypothesis: str = "",
    body: str = "",
) -> tuple[str, dict]:
    """(template, fields) from the input form; raises InputError on an empty or bad input."""
    template = INPUT_KINDS.get(kind, kind) if isinstance(kind, str) else None
    question, premise = text(question, "question"), text(premise, "premise")
    hypothesis, body = text(hypothesis, "hypothesis"), text(body, "body")
    if template == "free":
        fields = {"text": question}
    elif template == "cqa":
        fields = {"question": question, "choices": parse_choices(choices)}
    elif template == "nli":
        fields = {"premise": premise, "hypothesis": hypothesis}
    elif template == "svamp":
        fields = {"body": body, "question": question}
    else:
        raise InputError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")
    get_template(template).render(fields)  # validates: empty text, too few choices...
    return template, fields


def example_rows(records: list[dict]) -> tuple[list[list], list[str]]:
    """Rows for the form's examples: [kind, question, choices, premise, hypothesis, body, gold]."""
    rows, labels = [], []
    for r in records:
        t = r["template"]
        question = r.get("question") or r.get("text") or ""
        rows.append(
            [
                KIND_OF_TEMPLATE.get(t, "Free text"),
                question,
                " | ".join(r.get("choices") or []),
                r.get("premise", ""),
                r.get("hypothesis", ""),
                r.get("body", ""),
                r.get("answer", ""),
            ]
        )
        shown = question or r.get("hypothesis") or r.get("body") or ""
        labels.append(f"[{t}] {shorten(shown, 70)}")
    return rows, labels


def input_group(kinds: list[str], default: str) -> dict:
    """The task-input form (one per tab): kind, text fields, gold answer."""
    t = INPUT_KINDS[default]
    c: dict = {}
    c["kind"] = gr.Radio(kinds, value=default, label="Input", elem_classes=["kd-kind"])
    c["question"] = gr.Textbox(label="Question", lines=2, placeholder="Type a question…",
                               visible=t != "nli")  # fmt: skip
    c["choices"] = gr.Textbox(label="Choices (separate with | or new lines)",
                              placeholder="key | spoon | pillow", visible=t == "cqa")  # fmt: skip
    c["premise"] = gr.Textbox(label="Premise", lines=2, visible=t == "nli")
    c["hypothesis"] = gr.Textbox(label="Hypothesis", lines=1, visible=t == "nli")
    c["body"] = gr.Textbox(label="Problem", lines=3, placeholder="The story of the problem",
                           visible=t == "svamp")  # fmt: skip
    c["gold"] = gr.Textbox(label="Gold answer (optional: marks answers correct/wrong)")
    fields = [c[k] for k in ("question", "choices", "premise", "hypothesis", "body")]
    c["kind"].change(_field_visibility, c["kind"], fields, queue=False, api_visibility="private")
    c["inputs"] = [c["kind"], *fields]
    return c


def _field_visibility(kind: str) -> list:
    t = INPUT_KINDS.get(kind, "free")
    label = {"free": "Text", "svamp": "Question (last sentence)"}.get(t, "Question")
    return [
        gr.update(visible=t != "nli", label=label),
        gr.update(visible=t == "cqa"),
        gr.update(visible=t == "nli"),
        gr.update(visible=t == "nli"),
        gr.update(visible=t == "svamp"),
    ]


def add_examples(c: dict, kinds: list[str]) -> None:
    """Clickable demo questions from assets/examples.json (those this form can show)."""
    from explain.examples import load_examples

    try:
        records = load_examples()
    except KDLensError as e:
        gr.Markdown(error_md(str(e)))
        return
    records = [r for r in records if KIND_OF_TEMPLATE.get(r["template"]) in kinds]
    rows, labels = example_rows(records)
    if rows:
        gr.Examples(
            rows,
            [*c["inputs"], c["gold"]],
            example_labels=labels,
            label="Examples (click one)",
            examples_per_page=8,
        )
