"""User-facing errors: one line, no traceback, shown as is by the CLI and the app."""

from __future__ import annotations

import argparse
from typing import NoReturn


class KDLensError(Exception):
    """An error the user can act on. Its message is a single readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ModelSpecError(KDLensError):
    """A model spec that names nothing loadable."""


class PackError(KDLensError):
    """Fetching, verifying or converting a model pack failed."""


class WeightsError(PackError):
    """Model weights that do not fit the architecture: missing or unexpected weight keys."""


class InputError(KDLensError):
    """Bad task input (empty question, wrong choices, unknown template...)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLIs' error style: ``error: ...`` in one line on stderr, exit 2
    (argparse's default prints the usage first, several lines for a long command)."""

    def error(self, message: str) -> NoReturn:
        import sys

        print(f"error: {self.prog}: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def one_line(e: BaseException) -> str:
    """A user-facing line: KDLensError messages as they are, others with their type."""
    if isinstance(e, KDLensError):
        return str(e)
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def run_cli(fn, args, resume_hint: str = "") -> int:
    """Run a CLI command: one line on stderr and a non-zero exit instead of a traceback.

    Exit 2 for errors the user can fix, 1 for anything else (``--debug`` shows the traceback).
    """
    import sys
    import traceback

    try:
        return fn(args)
    except KDLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted{resume_hint}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
