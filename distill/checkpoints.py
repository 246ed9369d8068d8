"""Training checkpoints: model, optimizer, scheduler and per-process RNG states.

Everything is safetensors + JSON (no pickles). The model and optimizer are the same on every
process and are written once; each process writes its own RNG state (``rng.rank<R>.*``) and
restores exactly that one on resume, so data-parallel runs replay their random streams.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from explain.errors import KDLensError
from explain.io import atomic_write_text

from .runs import RunDir


class CheckpointError(KDLensError):
    """A checkpoint that cannot be restored."""


def _rng_files(folder: Path, rank: int) -> tuple[Path, Path]:
    return folder / f"rng.rank{rank}.safetensors", folder / f"rng.rank{rank}.json"


def save_rng(folder: Path, rank: int) -> None:
    """This process's torch (CPU and CUDA), Python and NumPy generator states."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py, npy = random.getstate(), np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
    }
    st, js = _rng_files(folder, rank)
    save_file(tensors, str(st))
    atomic_write_text(js, json.dumps(meta))


def load_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import load_file

    st, js = _rng_files(folder, rank)
    if not st.is_file() or not js.is_file():
        raise CheckpointError(
            f"checkpoint {folder.name} has no random state for process {rank}: resume with "
            "the number of processes that wrote it"
        )
    tensors, meta = load_file(str(st)), json.loads(js.read_text(encoding="utf-8"))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    run: RunDir,
    step: int,
    model,
    optimizer,
    scheduler,
    extra: dict,
    keep: int = 1,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> Path | None:
    """Write ``checkpoints/step-N/`` (staged, then renamed into place by the main process).

    Called by every process: each writes its RNG state into the staging folder; the main one
    (``rank`` 0) writes the rest and commits. ``barrier`` synchronises the processes.
    """
    from safetensors.torch import save_file, save_model

    tmp = run.checkpoints_dir / f".step-{step}.tmp"
    if rank == 0:
        tmp = run.staging_dir(step)
    barrier()
    save_rng(tmp, rank)
    barrier()
    if rank != 0:
        barrier()
        return None
    save_model(model, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors, opt_meta = {}, {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                opt_meta.setdefault(str(pid), {})[k] = v
    if tensors:
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    sched = scheduler.state_dict()
    sched.pop("lr_lambdas", None)  # plain functions: rebuilt from the config
    meta = {
        "step": step,
        "optimizer": {
            "param_groups": opt["param_groups"],
            "state": opt_meta,
            "ids": [int(p) for p in opt["state"]],
        },
        "scheduler": sched,
        **extra,
    }
    atomic_write_text(tmp / "state.json", json.dumps(meta))
    final = run.commit_checkpoint(tmp, step, keep)
    barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; returns the JSON metadata."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    opt_file = path / "optimizer.safetensors"
    tensors = load_file(str(opt_file)) if opt_file.is_file() else {}
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    o = meta["optimizer"]
    state = {}
    for pid in o["ids"]:
        st = dict(o["state"].get(str(pid), {}))
        prefix = f"optimizer.{pid}."
        st.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[pid] = st
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in o["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(groups)})
    load_rng(path, rank)
    return meta


__all__ = ["CheckpointError", "load_checkpoint", "load_rng", "save_checkpoint", "save_rng"]
