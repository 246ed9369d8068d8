"""Task templates: render task fields into a prompt and know which characters are task input.

Rationales may only come from task-input spans, so a template returns the spans it inserted
the user's text into. Register a new template with :func:`register_template`.
"""

from __future__ import annotations

import re
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
    # Free-text fields, in the order they may be shortened when a prompt is too long (the
    # longest is trimmed first); options and answer instructions are never trimmed.
    free_fields: tuple[str, ...] = ()

    def render(self, fields: dict) -> Prompt:
        raise NotImplementedError

    def answer_options(self, fields: dict) -> list[str] | None:
        """The closed set of answers, when the task has one (for choice scoring)."""
        return None

    def answer_span(self, text: str, fields: dict) -> tuple[int, int] | None:
        """Character span of the answer (in the template's fixed answer form) inside a
        generated ``text``, or None when the text holds no such answer. Attribution targets
        this span, never a reasoning preamble around it."""
        line = text.split("\n", 1)[0]
        start = len(line) - len(line.lstrip())
        end = len(line.rstrip())
        return (start, end) if end > start else None


class FreeTemplate(Template):
    name = "free"
    required = ("text",)
    description = "any question or instruction"
    free_fields = ("text",)

    def render(self, fields: dict) -> Prompt:
        b = _Builder().inp(_clean(fields, "text"))
        return Prompt(b.text(), b.spans, self.name, dict(fields))


class CQATemplate(Template):
    name = "cqa"
    required = ("question", "choices")
    description = "multiple choice: a question and lettered choices"
    free_fields = ("question",)

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
        b.lit("\nReply with the text of the correct choice only.")
        f = dict(fields, question=question, choices=choices)
        return Prompt(b.text(), b.spans, self.name, f)

    def answer_options(self, fields: dict) -> list[str]:
        return self._choices(fields)

    def answer_span(self, text: str, fields: dict) -> tuple[int, int] | None:
        # The earliest option named by its text, or a letter like "(b)" / "b)" at the start.
        low = text.lower()
        best = None
        for choice in self._choices(fields):
            m = re.search(rf"(?<!\w){re.escape(choice.lower())}(?!\w)", low)
            if m and (best is None or m.start() < best[0] or
                      (m.start() == best[0] and m.end() > best[1])):  # fmt: skip
                best = (m.start(), m.end())
        letter = re.match(r"\s*(\(?[a-j]\))", low)
        if letter and (best is None or best[0] > letter.end() + 1):
            best = letter.span(1)
        return best


NLI_LABELS = ["entailment", "neutral", "contradiction"]


class NLITemplate(Template):
    name = "nli"
    required = ("premise", "hypothesis")
    description = "natural language inference: premise and hypothesis"
    free_fields = ("premise", "hypothesis")

    def render(self, fields: dict) -> Prompt:
        premise, hypothesis = _clean(fields, "premise"), _clean(fields, "hypothesis")
        b = _Builder().lit("Premise: ").inp(premise).lit("\nHypothesis: ").inp(hypothesis)
        b.lit(
            "\nDoes the premise entail the hypothesis? Reply with one word: entailment, neutral"
            " or contradiction."
        )
        f = dict(fields, premise=premise, hypothesis=hypothesis)
        return Prompt(b.text(), b.spans, self.name, f)

    def answer_options(self, fields: dict) -> list[str]:
        return list(NLI_LABELS)

    def answer_span(self, text: str, fields: dict) -> tuple[int, int] | None:
        m = re.search(rf"\b({'|'.join(NLI_LABELS)})\b", text.lower())
        return m.span(1) if m else None


class SVAMPTemplate(Template):
    name = "svamp"
    required = ("body", "question")
    description = "math word problem: body and question"
    free_fields = ("body", "question")

    def render(self, fields: dict) -> Prompt:
        if not fields.get("body") and fields.get("text"):
            body, _, question = str(fields["text"]).rpartition("\n")
            fields = dict(fields, body=body or question, question=question if body else "")
        body = _clean(fields, "body")
        b = _Builder().inp(body)
        question = " ".join(str(fields.get("question") or "").split())
        if question:
            b.lit("\n").inp(question)
        b.lit(
            "\nReply with only an arithmetic expression that computes the result,"
            " like ( 12.0 / 3.0 )."
        )
        return Prompt(b.text(), b.spans, self.name, dict(fields, body=body, question=question))

    def answer_span(self, text: str, fields: dict) -> tuple[int, int] | None:
        # The first run of numbers, operators and parentheses holding a digit.
        for m in _EXPR.finditer(text):
            if any(ch.isdigit() for ch in m.group()):
                a, b = m.span()
                while a < b and text[a] in " .":
                    a += 1
                while b > a and text[b - 1] in " .=+-*/(":
                    b -= 1
                return _balanced(text, a, b)
        return None


_EXPR = re.compile(r"[\d.()+\-*/×÷\s]+")


def _balanced(text: str, a: int, b: int) -> tuple[int, int]:
    """Widen or narrow ``text[a:b]`` so that its parentheses pair up."""
    depth = 0
    for ch in text[a:b]:
        depth += (ch == "(") - (ch == ")")
    while depth < 0 and a < b and text[b - 1] == ")":  # a stray closing parenthesis
        b, depth = b - 1, depth + 1
    while depth > 0 and a < b and text[a] == "(":
        a, depth = a + 1, depth - 1
    return a, b


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
