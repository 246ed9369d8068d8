"""User-facing errors: one line, no traceback, shown as is by the CLI and the app."""

from __future__ import annotations


class KDLensError(Exception):
    """An error the user can act on. Its message is a single readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ModelSpecError(KDLensError):
    """A model spec that names nothing loadable."""


class PackError(KDLensError):
    """Fetching, verifying or converting a model pack failed."""


class InputError(KDLensError):
    """Bad task input (empty question, wrong choices, unknown template...)."""
