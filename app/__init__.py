"""KD-Lens web app package: one module per tab, wired by :mod:`app.ui`.

``python app.py`` (the script next to this folder) runs :func:`app.cli.main`; inside it and in
tests ``import app`` finds this package (a folder wins over a module of the same name).
"""

from __future__ import annotations

import os

# Off unless asked for: Gradio reads this when it is imported (version checks, telemetry).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .cli import main, parse_args  # noqa: E402
from .ui import build_app, launch_app  # noqa: E402

__all__ = ["build_app", "launch_app", "main", "parse_args"]
