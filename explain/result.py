"""The attribution result: one JSON-serialisable object per explained answer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .words import Word, rescore, select_rationale


@dataclass
class AttributionResult:
    prompt: str
    answer: str
    method: str
    model: str
    template: str
    input_tokens: list[str]
    input_offsets: list[list[int] | None]  # [start, end] into prompt; None for special tokens
    output_tokens: list[str]
    matrix: list[list[float]]  # output tokens x input tokens
    token_scores: list[float]  # per input token, aggregated over output tokens
    words: list[Word]
    rationale: list[Word]
    input_spans: list[list[int]]
    fields: dict = field(default_factory=dict)
    input_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    target: str = "generated"  # or "given"
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rationale_text(self) -> str:
        return " ".join(w.text for w in self.rationale)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> AttributionResult:
        d = dict(d)
        d["words"] = [Word(**w) for w in d["words"]]
        d["rationale"] = [Word(**w) for w in d["rationale"]]
        return cls(**d)

    @property
    def piece_aggregation(self) -> str:
        # results saved before the setting existed summed their pieces
        return str(self.settings.get("piece_aggregation", "sum"))

    def word_matrix(self) -> list[list[float]]:
        """Output tokens x words: each word's pieces aggregated as recorded, row by row."""
        return [
            [w.score for w in rescore(self.words, row, self.piece_aggregation)]
            for row in self.matrix
        ]

    def for_output(self, t: int) -> AttributionResult:
        """The same result scored by answer token ``t`` alone."""
        if not 0 <= t < len(self.matrix):
            raise IndexError(f"answer token {t} out of range 0..{len(self.matrix) - 1}")
        row = list(self.matrix[t])
        words = rescore(self.words, row, self.piece_aggregation)
        k = int(self.settings.get("top_k", 5))
        d = self.to_dict()
        d.update(
            token_scores=row,
            words=[w.to_dict() for w in words],
            rationale=[w.to_dict() for w in select_rationale(words, k)],
        )
        d["settings"] = dict(self.settings, output_token=t)
        return AttributionResult.from_dict(d)
