"""Which files the app may read, and clean-up of what it writes.

A typed path is accepted only inside the runs folder, the datasets folder or Gradio's upload
folder; anything else gets one message that says nothing about whether the file exists (the
check runs before any look at the disk). Rejected uploads and old exports are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from distill.data import DataError
from explain.errors import InputError
from explain.packs import PACKS

EXPORT_TTL_S = 3600.0  # exports older than this go when the next one is written
EXPORTS_KEPT = 50


def upload_root() -> Path:
    """Where Gradio keeps uploaded files ($GRADIO_TEMP_DIR or <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class PathPolicy:
    """The folders a typed path may point into, and the model specs allowed as they are."""

    def __init__(self, runs_root: Path, data_root: Path, models: list[str]) -> None:
        self.runs_root = Path(runs_root).resolve()
        self.data_root = Path(data_root).expanduser().resolve()
        self.models = {m.strip() for m in models if m and m.strip()}

    def roots(self) -> list[Path]:
        return [self.runs_root, self.data_root, upload_root()]

    def message(self, typed: str) -> str:
        return (
            f"{typed!r} is not inside the runs folder ({self.runs_root}), the datasets folder "
            f"({self.data_root}) or an upload; the app reads files only there"
        )

    def check(self, typed: str | os.PathLike) -> Path:
        """The resolved path when it lies inside an allowed folder (links followed), else an
        InputError: the same for a file that exists and one that does not."""
        text = str(typed).strip()
        path = Path(os.path.realpath(Path(text).expanduser()))
        if not _inside(path, self.roots()):
            raise InputError(self.message(text))
        return path

    def check_model(self, spec: str) -> None:
        """A model spec: a pack, a model the app was started with, a hub id, or a folder
        inside the allowed folders (a trained run's model)."""
        spec = spec.strip()
        if spec in PACKS or spec in self.models:
            return
        looks_like_path = (
            spec.startswith((".", "/", "~", "\\"))
            or spec.count("/") > 1
            or "\\" in spec
            or os.path.lexists(spec)
        )
        if looks_like_path:
            self.check(spec)


# ---------------------------------------------------------------------------------------------
# Uploads and exports


def store_upload(src: Path, folder: Path, suffixes: tuple[str, ...]) -> tuple[Path, bool]:
    """Copy an upload under ``folder`` (content-addressed, so a run keeps its data after
    Gradio clears its cache); returns (path, whether this call created it)."""
    from distill.data import data_hash

    if src.suffix.lower() not in suffixes:
        discard_upload(src)
        raise DataError(f"{src.name}: upload a {', '.join(suffixes)} file")
    if not src.is_file():
        raise DataError("the upload is gone; upload the file again")
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", src.name).strip("._") or "data"
    dest = folder / f"{data_hash(src)[:12]}-{name}"
    if dest.exists():
        return dest, False
    tmp = folder / f".{dest.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest, True


def discard_upload(path: Path | None) -> None:
    """Remove a rejected upload from Gradio's upload folder (and its now empty folder)."""
    if not path:
        return
    p = Path(os.path.realpath(path))
    root = upload_root()
    if not p.is_relative_to(root) or p == root:
        return
    p.unlink(missing_ok=True)
    if p.parent != root:
        try:
            p.parent.rmdir()
        except OSError:
            pass  # not empty: another file of the same upload batch


def new_export_folder(root: Path, now: float | None = None) -> Path:
    """A fresh folder for one export; exports older than an hour (or beyond the newest 50)
    are removed first, so the temporary folder does not grow without bound."""
    now = time.time() if now is None else now
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                 reverse=True)  # fmt: skip
    for i, p in enumerate(old):
        if i >= EXPORTS_KEPT - 1 or now - p.stat().st_mtime > EXPORT_TTL_S:
            shutil.rmtree(p, ignore_errors=True)
    folder = root / (time.strftime("%Y%m%d-%H%M%S-") + f"{time.time_ns() % 10**9}")
    folder.mkdir()
    return folder
