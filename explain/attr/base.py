"""Attribution method interface and registry: methods are found by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from ..lm_scoring import Scorer


@dataclass
class MethodOutput:
    matrix: Tensor  # [B, T, Lp]: score of every prompt position for every answer token
    extras: dict = field(default_factory=dict)  # per-method figures, e.g. completeness gap


class AttributionMethod:
    """One attribution method. Subclasses set ``name`` and implement ``attribute``."""

    name: ClassVar[str] = ""
    signed: ClassVar[bool] = True
    description: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    # Longest prompt (tokens) the method accepts: its cost grows with the input beyond one
    # backward pass (occlusion runs a forward per input token). None: explain.limits only.
    max_input_tokens: ClassVar[int | None] = None

    def __init__(self, **settings) -> None:
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no setting(s) {sorted(unknown)}")
        self.settings = {**self.defaults, **settings}

    def check_input_tokens(self, n: int) -> None:
        """Refuse a prompt of ``n`` tokens over :attr:`max_input_tokens`, before any model run."""
        from ..errors import InputError

        if self.max_input_tokens is not None and n > self.max_input_tokens:
            raise InputError(
                f"{self.name} takes prompts of at most {self.max_input_tokens:,} tokens "
                f"(its cost grows with every input token); this one has {n:,}: use saliency "
                "or a shorter input"
            )

    def attribute(self, scorer: Scorer) -> MethodOutput:
        raise NotImplementedError


METHODS: dict[str, type[AttributionMethod]] = {}


def register(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **settings) -> AttributionMethod:
    from ..errors import InputError

    try:
        cls = METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None
    return cls(**settings)
