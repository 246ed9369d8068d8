"""``python app.py``: flags, the optional preload of the default models, and the launch."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from explain.errors import OneLineParser
from explain.packs import DEFAULT_STUDENT, DEFAULT_TEACHER

# (flag, environment variable, default, help): each flag's default comes from its variable.
FLAGS = [
    ("--teacher", "KDLENS_TEACHER", DEFAULT_TEACHER,
     "teacher: pack name, local model folder or hub id"),
    ("--student", "KDLENS_STUDENT", DEFAULT_STUDENT,
     "student: pack name, local model folder or hub id"),
    ("--runs", "KDLENS_RUNS", "runs", "folder for run folders (default ./runs)"),
    ("--datasets", "KDLENS_DATASETS", None,
     "folder laid out like shared/datasets, for the demo sets"),
    ("--host", "KDLENS_HOST", "127.0.0.1", "address to bind (default 127.0.0.1, local only)"),
]  # fmt: skip


def _port(text: str) -> int:
    """A TCP port (KDLENS_PORT=abc ended in a traceback before the parser ran)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = OneLineParser(prog="python app.py", description="KD-Lens web app")
    for flag, var, default, help_ in FLAGS:
        p.add_argument(flag, default=env(var, default), help=f"{help_} (${var})")
    p.add_argument(
        "--port",
        type=_port,
        default=env("KDLENS_PORT", "7860"),  # a text default goes through _port too
        help="port (default 7860) ($KDLENS_PORT)",
    )
    p.add_argument(
        "--preload",
        action="store_true",
        help="fetch and load the teacher and student before serving (progress on "
        "the terminal), so the first click answers at full speed",
    )
    return p.parse_args(argv)  # fmt: skip


class TerminalProgress:
    """``progress(msg, frac)`` as one redrawn terminal line per step (a new line per message)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.last = None

    def __call__(self, msg: str, frac: float | None) -> None:
        pct = "" if frac is None else f" {100 * frac:5.1f}%"
        if msg != self.last and self.last is not None:
            self.stream.write("\n")
        self.stream.write(f"\r[preload]{pct} {msg}")
        self.stream.flush()
        self.last = msg

    def done(self) -> None:
        if self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.last = None


def preload(ctx, stream=None) -> None:
    """Load the app's teacher and student into its caches, with progress on the terminal."""
    bar = TerminalProgress(stream)
    try:
        ctx.teacher_model(ctx.teacher, bar)
        ctx.student_model(ctx.student, bar)
    finally:
        bar.done()


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    from distill.runs import runs_root

    from .common import AppContext, user_message
    from .ui import build_app, launch_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    args = parse_args(argv)
    kw = {"data_root": Path(args.datasets)} if args.datasets else {}
    ctx = AppContext(args.teacher, args.student, Path(args.runs) if args.runs else runs_root(),
                     **kw)  # fmt: skip
    if args.preload:
        try:
            preload(ctx)
        except Exception as e:  # noqa: BLE001 - one line, exit 2, like the CLIs
            print(f"error: preload failed: {user_message(e)}", file=sys.stderr)
            raise SystemExit(2) from None
    launch_app(build_app(ctx=ctx), args.host, args.port)
