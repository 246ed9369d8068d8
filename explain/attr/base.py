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

    def __init__(self, **settings) -> None:
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no setting(s) {sorted(unknown)}")
        self.settings = {**self.defaults, **settings}

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
