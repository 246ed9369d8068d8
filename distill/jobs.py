"""One background job at a time (training or extraction) for the app.

A job is a function ``fn(**kwargs, progress=callback, stop=event) -> dict``. Its progress
records (``stage``, ``step``, ``total``, ``loss``, ``dev_accuracy``, ``examples_per_s``,
``eta_s``, ``message``, ``run_dir``) are folded into :meth:`JobManager.status`. An error inside
the job is caught and kept as one line; the job's run folder keeps its last checkpoint.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from explain.errors import KDLensError, one_line

IDLE, RUNNING, STOPPING, FINISHED, FAILED, STOPPED = (
    "idle", "running", "stopping", "finished", "failed", "stopped",
)  # fmt: skip


@dataclass
class Job:
    id: str
    kind: str
    state: str = RUNNING
    stage: str = "starting"
    step: int = 0
    total: int | None = None
    examples_per_s: float | None = None
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    dev: list[tuple[int, float]] = field(default_factory=list)
    message: str = ""
    run_dir: str | None = None
    error: str | None = None
    result: dict | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    traceback: str | None = None  # for logs; never shown as the user message


class JobManager:
    """Runs at most one job at a time in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ids = itertools.count(1)

    # Control ---------------------------------------------------------------------------------
    def start(self, kind: str, fn: Callable[..., dict | None], **kwargs) -> str:
        """Start ``fn`` in the background; refuses while another job runs."""
        with self._lock:
            if self._job is not None and self._job.state in (RUNNING, STOPPING):
                j = self._job
                where = f" ({j.run_dir})" if j.run_dir else ""
                raise KDLensError(
                    f"a job is already running: {j.kind} {j.id}{where}; stop it or wait"
                )
            job = Job(id=f"{kind}-{next(self._ids)}", kind=kind)
            self._job, self._stop = job, threading.Event()
            stop = self._stop
            self._thread = threading.Thread(
                target=self._run,
                args=(job, fn, kwargs, stop),
                name=f"kdlens-{job.id}",
                daemon=True,
            )
            self._thread.start()
            return job.id

    def stop(self) -> bool:
        """Ask the running job to stop (it checkpoints first). False when none runs."""
        with self._lock:
            if self._job is None or self._job.state != RUNNING:
                return False
            self._job.state = STOPPING
            self._job.message = "stopping after the current step"
            self._stop.set()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current job ends; True when it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.state in (RUNNING, STOPPING)

    # State -----------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            j = self._job
            if j is None:
                return {
                    "state": IDLE,
                    "id": None,
                    "kind": None,
                    "stage": "",
                    "step": 0,
                    "total": None,
                    "examples_per_s": None,
                    "eta_s": None,
                    "losses": [],
                    "dev": [],
                    "message": "",
                    "run_dir": None,
                    "error": None,
                }
            return {
                "state": j.state,
                "id": j.id,
                "kind": j.kind,
                "stage": j.stage,
                "step": j.step,
                "total": j.total,
                "examples_per_s": j.examples_per_s,
                "eta_s": j.eta_s,
                "losses": list(j.losses),
                "dev": list(j.dev),
                "message": j.message,
                "run_dir": j.run_dir,
                "error": j.error,
                "result": j.result,
                "elapsed_s": round((j.ended or time.time()) - j.started, 1),
            }

    # Worker ----------------------------------------------------------------------------------
    def _progress(self, job: Job, record: dict) -> None:
        with self._lock:
            for key in ("stage", "total", "examples_per_s", "eta_s", "message", "run_dir"):
                if record.get(key) is not None:
                    setattr(job, key, record[key])
            if record.get("step") is not None:
                job.step = int(record["step"])
            if record.get("loss") is not None:
                job.losses.append((int(record.get("step", job.step)), float(record["loss"])))
            if record.get("dev_accuracy") is not None:
                job.dev.append((int(record.get("step", job.step)), float(record["dev_accuracy"])))

    def _run(self, job: Job, fn: Callable, kwargs: dict, stop: threading.Event) -> None:
        try:
            result = fn(**kwargs, progress=lambda r: self._progress(job, r), stop=stop)
            with self._lock:
                job.result = result if isinstance(result, dict) else None
                if job.result and job.result.get("run_dir"):
                    job.run_dir = job.result["run_dir"]
                stopped = (job.result or {}).get("status") == "stopped"
                job.state = STOPPED if stopped else FINISHED
                job.stage = job.state
                if not job.message or job.state == FINISHED:
                    job.message = "stopped; resumable" if stopped else "finished"
        except BaseException as e:  # noqa: BLE001 - a job's error must never be lost
            with self._lock:
                job.state, job.stage = FAILED, FAILED
                job.error = one_line(e)
                job.message = job.error
                job.traceback = traceback.format_exc()
        finally:
            with self._lock:
                job.ended = time.time()


__all__ = ["Job", "JobManager", "one_line"]
