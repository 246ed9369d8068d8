"""Moved to :mod:`explain.lm_scoring`; re-exported so existing imports keep working."""

from ..lm_scoring import ROWS, Scorer, ScoringBatch, collate

__all__ = ["ROWS", "Scorer", "ScoringBatch", "collate"]
