"""Run folders: one per extraction or training job (DESIGN section 6).

A run folder holds ``config.json`` (all settings, versions, seed, model specs, data hashes),
a streamed ``metrics.jsonl``, ``status.json`` while it runs, ``summary.json`` once finished,
and ``checkpoints/step-N/`` (safetensors + JSON, no pickles). Every whole-file write is atomic
(temp file in the same folder, then ``os.replace``), so a kill never leaves half a file.
A finished run (one with ``summary.json``) is never overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

from explain.errors import KDLensError
from explain.io import atomic_write_text

KDLENS_VERSION = "0.1.0"
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# Keys of config.json that may differ between a run and its resumption.
RESUME_FREE_KEYS = ("versions", "created")


class RunError(KDLensError):
    """A run folder that cannot be used as asked (bad name, finished, other settings)."""


# ---------------------------------------------------------------------------------------------
# Paths and atomic writes


def runs_root() -> Path:
    """Where run folders live: ``$KDLENS_RUNS``, else ``./runs``."""
    return Path(os.environ.get("KDLENS_RUNS") or "runs")


def safe_run_dir(root: str | Path, name: str) -> Path:
    """``root/name`` for a plain run name; anything that could escape ``root`` is refused."""
    name = str(name or "").strip()
    if not name:
        raise RunError("empty run name; use letters, digits, '.', '_' or '-'")
    if "/" in name or "\\" in name or os.sep in name or Path(name).is_absolute():
        raise RunError(f"run name {name!r} must not contain path separators")
    if name in (".", "..") or ".." in name:
        raise RunError(f"run name {name!r} must not contain '..'")
    if not NAME_RE.fullmatch(name):
        raise RunError(f"run name {name!r} may only use letters, digits, '.', '_' and '-'")
    root_resolved = Path(root).expanduser().resolve()
    path = (root_resolved / name).resolve()
    if path.parent != root_resolved:
        raise RunError(f"run name {name!r} leaves the runs folder {root_resolved}")
    return path


def check_writable(folder: str | Path) -> None:
    """Refuse a run folder that cannot be created or written, before any model load: probe
    its nearest existing ancestor with a temporary folder, removed at once (nothing stays)."""
    import tempfile

    path = Path(folder).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a folder")
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise RunError(f"cannot create {path}: {base} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kdlens-probe-", dir=base))
    except OSError as e:
        raise RunError(f"cannot write the run folder {path}: {e.strerror or e}") from None


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and fsync it, so a kill loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return default


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete JSON lines; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def versions() -> dict:
    """Library versions recorded in every run's config."""
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kdlens": KDLENS_VERSION,
    }
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:  # pragma: no cover - accelerate is pinned
        pass
    return out


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUME_FREE_KEYS}


def differences(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """Keys whose values differ, one level into nested dicts (``settings.lr``). A nested key
    the old record lacks counts as ``defaults[key][sub]``: a setting added after the run was
    made, whose default keeps the old behaviour."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            d = (defaults or {}).get(k) or {}
            out += [f"{k}.{sub}" for sub in sorted(set(a) | set(b))
                    if a.get(sub, d.get(sub)) != b.get(sub)]  # fmt: skip
        elif a != b:
            out.append(k)
    return out


def _normalise(data: Any) -> Any:
    """What ``data`` looks like after a JSON round trip (tuples become lists...)."""
    return json.loads(json.dumps(data, default=str))


def _writer_gone(status: dict) -> bool:
    """True when the status was written on this machine by a process that no longer runs."""
    pid = status.get("pid")
    if not isinstance(pid, int) or status.get("host") != platform.node():
        return False  # another machine (shared disk) or an old status: cannot tell
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


# ---------------------------------------------------------------------------------------------
# A run folder


class RunDir:
    """One run folder. ``create(config)`` starts it or, when unfinished with the same
    config, reopens it for resumption."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # Files -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    # State -----------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.config_path.is_file()

    @property
    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def config(self) -> dict:
        return read_json(self.config_path, {}) or {}

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def status(self) -> dict:
        """``{"status": ...}``: finished, failed, stopped, running, interrupted (the process that
        wrote "running" on this machine is gone: killed; resumable), or unfinished."""
        if self.is_finished:
            return {"status": "finished", **(self.summary() or {})}
        st = read_json(self.status_path, {}) or {}
        if st.get("status") in ("running", "stopping") and _writer_gone(st):
            return dict(st, status="interrupted")
        return st if st.get("status") else {"status": "unfinished"}

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def check(self, config: dict, defaults: dict | None = None) -> bool:
        """Raise as :meth:`create` would, writing nothing; True when it would resume.
        ``defaults``: values of nested settings an older record lacks (:func:`differences`)."""
        config = _normalise(dict(config))
        if self.is_finished:
            raise RunError(
                f"run {self.name!r} is finished and is never overwritten; choose another name"
            )
        if self.exists:
            diff = differences(
                _comparable(self.config()), _comparable(config), _normalise(defaults or {})
            )
            if diff:
                raise RunError(
                    f"run {self.name!r} exists, unfinished, with other settings "
                    f"({', '.join(diff)}); use the same settings to resume or another name"
                )
            return True
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunError(f"{self.path} exists and is not a run folder; choose another name")
        return False

    def create(self, config: dict, defaults: dict | None = None) -> bool:
        """Start the run, or reopen it to resume. Returns True when resuming.

        Refuses a finished run, and an unfinished one whose settings differ.
        """
        if self.check(config, defaults):
            return True
        config = _normalise(dict(config))
        config.setdefault("versions", versions())
        config.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config)
        return False

    def log(self, record: dict) -> None:
        append_jsonl(self.metrics_path, record)

    def truncate_metrics(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)."""
        keep = [r for r in self.metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    def set_status(self, status: str, **extra: Any) -> None:
        # pid and host let a reader tell a live run from a killed one (status "interrupted").
        atomic_write_json(
            self.status_path,
            {
                "status": status,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "pid": os.getpid(),
                "host": platform.node(),
                **extra,
            },
        )

    def finish(self, summary: dict) -> None:
        summary = {"status": "finished", **summary}
        atomic_write_json(self.summary_path, summary)
        self.set_status("finished")

    # Checkpoints -----------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (renamed into place), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for p in self.checkpoints_dir.iterdir():
            m = re.fullmatch(r"step-(\d+)", p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def staging_dir(self, step: int) -> Path:
        """A fresh folder to write checkpoint ``step`` into before :meth:`commit_checkpoint`."""
        tmp = self.checkpoints_dir / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, staging: Path, step: int, keep: int = 1) -> Path:
        """Rename a staged checkpoint into place, then prune all but the newest ``keep``."""
        final = self.checkpoint_dir(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for _, old in self.checkpoints()[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def clean_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Listing


def _run_folders(root: Path) -> list[Path]:
    """Run folders directly under ``root``, and those inside experiment folders (a folder with
    ``plan.json``, see :mod:`distill.pipeline`), listed as ``<experiment>/<stage>``."""
    out = []
    for p in root.iterdir():
        if not p.is_dir():
            continue
        if RunDir(p).exists:
            out.append(p)
        elif (p / "plan.json").is_file():
            out += [q for q in p.iterdir() if q.is_dir() and RunDir(q).exists]
    return out


RUN_COLUMNS = ["name", "kind", "mode", "student", "task", "steps", "accuracy", "status", "path"]


def list_runs(root: str | Path | None = None):
    """A table of the run folders under ``root`` (newest first)."""
    import pandas as pd

    root = Path(root) if root is not None else runs_root()
    rows = []
    if root.is_dir():
        for p in _run_folders(root):
            run = RunDir(p)
            cfg, st = run.config(), run.status()
            # Training configs nest their settings; extraction configs keep them flat.
            settings = cfg.get("settings") or cfg
            summary = run.summary() or {}
            status = st.get("status")
            if status not in ("finished", "failed", "stopped", "interrupted", "running"):
                status = "unfinished"
            steps = summary.get("steps", st.get("step"))
            if steps is None:
                done = [r.get("step") for r in run.metrics() if "step" in r]
                steps = max(done) if done else 0
            rows.append(
                {
                    "name": p.relative_to(root).as_posix(),
                    "kind": cfg.get("kind"),
                    "mode": settings.get("mode"),
                    "student": settings.get("student") or (cfg.get("models") or {}).get("student"),
                    "task": settings.get("task"),
                    "steps": steps,
                    "accuracy": summary.get("accuracy", summary.get("teacher_accuracy")),
                    "status": status,
                    "path": str(p),
                    "_mtime": run.config_path.stat().st_mtime,
                }
            )
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + ["_mtime"])
    df = df.sort_values("_mtime", ascending=False).drop(columns="_mtime").reset_index(drop=True)
    return df


__all__ = [
    "RunDir",
    "RunError",
    "append_jsonl",
    "atomic_write_json",
    "atomic_write_text",
    "list_runs",
    "read_json",
    "read_jsonl",
    "runs_root",
    "safe_run_dir",
    "versions",
]
