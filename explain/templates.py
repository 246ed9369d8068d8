"""Task templates: render task fields into a prompt and know which characters are task input.

Rationales may only come from task-input spans, so a template returns the spans it inserted
the user's text into. Register a new template with :func:`register_template`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError

LETTERS = "abcdefghij"


@dataclass
class Prompt:
    """A rendered prompt: the full text fed to the model and its task-input char spans."""

    text: str
    input_spans: list[tuple[int, int]]
    template: str
    fields: dict = field(default_factory=dict)
    chat: bool = False

    def shifted(self, offset: int, text: str, chat: bool) -> Prompt:
        spans = [(a + offset, b + offset) for a, b in self.input_spans]
        return Prompt(text, spans, self.template, self.fields, chat)


class _Builder:
    """Concatenate template text and input text, recording input spans."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.pos = 0

    def lit(self, s: str) -> _Builder:
        self.parts.append(s)
        self.pos += len(s)
        return self

    def inp(self, s: str) -> _Builder:
        self.spans.append((self.pos, self.pos + len(s)))
        return self.lit(s)

    def text(self) -> str:
        return "".join(self.parts)


def _clean(fields: dict, name: str) -> str:
    val = fields.get(name)
    if val is None or not str(val).strip():
        raise InputError(f"the {name} is empty; enter some text")
    return " ".join(str(val).split())  # collapse whitespace so offsets stay simple


class Template:
    name = ""
    required: tuple[str, ...] = ()
    description = ""

    def render(self, fields: dict) -> Prompt:
        raise NotImplementedError

    def answer_options(self, fields: dict) -> list[str] | None:
        """The closed set of answers, when the task has one (for choice scoring)."""
        return None


class FreeTemplate(Template):
    name = "free"
    required = ("text",)
    description = "any question or instruction"

    def render(self, fields: dict) -> Prompt:
        b = _Builder().inp(_clean(fields, "text"))
        return Prompt(b.text(), b.spans, self.name, dict(fields))


class CQATemplate(Template):
    name = "cqa"
    required = ("question", "choices")
    description = "multiple choice: a question and lettered choices"

    def _choices(self, fields: dict) -> list[str]:
        choices = fields.get("choices")
        if isinstance(choices, str):
            choices = [c for c in choices.split("|")]
        choices = [" ".join(str(c).split()) for c in (choices or [])]
        if len(choices) < 2 or any(not c for c in choices):
            raise InputError("give at least two non-empty choices, separated by '|'")
        if len(choices) > len(LETTERS):
            raise InputError(f"at most {len(LETTERS)} choices are supported")
        return choices

    def render(self, fields: dict) -> Prompt:
        question = _clean(fields, "question")
        choices = self._choices(fields)
        b = _Builder().lit("Question: ").inp(question).lit("\nAnswer choices:")
        for letter, choice in zip(LETTERS, choices):
            b.lit(f"\n({letter}) ").inp(choice)
        b.lit("\nAnswer with the text of the correct choice.")
        f = dict(fields, question=question, choices=choices)
        return Prompt(b.text(), b.spans, self.name, f)

    def answer_options(self, fields: dict) -> list[str]:
        return self._choices(fields)


NLI_LABELS = ["entailment", "neutral", "contradiction"]


class NLITemplate(Template):
    name = "nli"
    required = ("premise", "hypothesis")
    description = "natural language inference: premise and hypothesis"

    def render(self, fields: dict) -> Prompt:
        premise, hypothesis = _clean(fields, "premise"), _clean(fields, "hypothesis")
        b = _Builder().lit("Premise: ").inp(premise).lit("\nHypothesis: ").inp(hypothesis)
        b.lit(
            "\nDoes the premise entail the hypothesis? Answer entailment, neutral or contradiction."
        )
        f = dict(fields, premise=premise, hypothesis=hypothesis)
        return Prompt(b.text(), b.spans, self.name, f)

    def answer_options(self, fields: dict) -> list[str]:
        return list(NLI_LABELS)


class SVAMPTemplate(Template):
    name = "svamp"
    required = ("body", "question")
    description = "math word problem: body and question"

    def render(self, fields: dict) -> Prompt:
        if not fields.get("body") and fields.get("text"):
            body, _, question = str(fields["text"]).rpartition("\n")
            fields = dict(fields, body=body or question, question=question if body else "")
        body = _clean(fields, "body")
        b = _Builder().inp(body)
        question = " ".join(str(fields.get("question") or "").split())
        if question:
            b.lit("\n").inp(question)
        b.lit("\nAnswer with an arithmetic expression that computes the result.")
        return Prompt(b.text(), b.spans, self.name, dict(fields, body=body, question=question))


TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    TEMPLATES[template.name] = template
    return template


for _t in (FreeTemplate(), CQATemplate(), NLITemplate(), SVAMPTemplate()):
    register_template(_t)


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise InputError(f"unknown template {name!r}; templates: {', '.join(TEMPLATES)}") from None


def render(template: str, fields: dict) -> Prompt:
    return get_template(template).render(fields)


def apply_chat(prompt: Prompt, tokenizer: object) -> Prompt:
    """Wrap the prompt in the tokenizer's chat template, shifting the input spans."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.text}], tokenize=False, add_generation_prompt=True
    )
    at = chat.find(prompt.text)
    if at < 0:  # a template that rewrites the content: fall back to the plain prompt
        return prompt
    return prompt.shifted(at, chat, chat=True)
