"""One table from experiments that differ only in their seeds.

An experiment is one command and one folder; a second seed run later goes into a folder of its
own (``--seeds 1 --out exp-s1``). :func:`combine` reads the finished folders, checks that their
plans agree on everything but the seeds (same data, test file by sha256, teacher, student,
modes, sizes and recipe), and writes the table of :func:`distill.pipeline.write_results` for
all seeds together, with the seed-averaged comparisons. The untrained student's rows come from
the first folder only: no training seed touches its weights, though its generation cap comes
from the seed's training answers (CQA's chat-template zero-shot scored 0.135 at seed 0 and
0.140 at seed 1, `bench/results/experiment_cpu_cqa{,_s1}.md`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from explain.errors import KDLensError

from .pipeline import ModelResult, write_results
from .plan import Plan
from .runs import check_writable, read_json

# Plan fields that may differ between the folders combined.
_MAY_DIFFER = {"seeds", "out"}


class CombineError(KDLensError):
    """Experiment folders that cannot share one table."""


def _load(folder: Path) -> dict:
    res = read_json(folder / "results.json")
    if res is None or "plan" not in res or "models" not in res:
        raise CombineError(f"{folder}: no finished experiment (results.json) in it")
    return res


def _predictions(folder: Path, path: str | None) -> str | None:
    """The predictions file of a model: as recorded, or by name in its folder (the recorded
    path is relative to where the experiment ran)."""
    if not path:
        return None
    if Path(path).is_file():
        return path
    local = folder / Path(path).name
    return str(local) if local.is_file() else None


def combine(folders: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` of ``folders`` together into ``out``."""
    dirs = [Path(f) for f in folders]
    if len(dirs) < 2:
        raise CombineError("give at least two experiment folders")
    outp = Path(out)
    if any(outp.resolve() == d.resolve() for d in dirs):
        raise CombineError(f"--out {out} is one of the experiment folders; choose a new one")
    if (outp / "plan.json").exists():  # its own results.md would be overwritten
        raise CombineError(f"--out {out} holds an experiment; choose a new folder")
    results = [_load(d) for d in dirs]
    first = results[0]["plan"]
    seeds: list[int] = []
    for d, res in zip(dirs, results):
        plan = res["plan"]
        diff = sorted(k for k in set(first) | set(plan)
                      if k not in _MAY_DIFFER and first.get(k) != plan.get(k))  # fmt: skip
        if diff:
            raise CombineError(f"{d} ran another plan than {dirs[0]} ({', '.join(diff)})")
        if res.get("test_sha256") != results[0].get("test_sha256"):
            raise CombineError(f"{d} was evaluated on another test file (sha256 differs)")
        twice = set(seeds) & set(plan["seeds"])
        if twice:
            raise CombineError(f"seed {min(twice)} is in two folders ({d})")
        seeds += plan["seeds"]
    trained = set(first["modes"])
    models: list[ModelResult] = []
    fields = {f.name for f in dataclasses.fields(ModelResult)}
    for i, (d, res) in enumerate(zip(dirs, results)):
        for m in res["models"]:
            if m["mode"] not in trained and i > 0:
                continue  # the untrained student: the same model in every folder
            m = {k: v for k, v in m.items() if k in fields}
            models.append(ModelResult(**m | {"predictions": _predictions(d, m.get("predictions"))}))
    # Trained rows grouped by mode, seeds in order, as one experiment with all seeds writes them.
    order = {n: k for k, n in enumerate(dict.fromkeys(m.mode for m in models))}
    models.sort(key=lambda m: (order[m.mode], m.seed if m.seed is not None else -1))
    check_writable(outp)
    outp.mkdir(parents=True, exist_ok=True)
    known = {f.name for f in dataclasses.fields(Plan)}
    plan = Plan(
        **{k: v for k, v in first.items() if k in known} | {"seeds": seeds, "out": str(outp)}
    )
    sources = [{"folder": str(d), "seeds": r["plan"]["seeds"], "finished": r.get("finished"),
                "extraction": r.get("extraction")} for d, r in zip(dirs, results)]  # fmt: skip
    return write_results(plan, models, results[0]["evaluation"], results[0].get("extraction"),
                         {"combined_from": sources}, results[0].get("test_sha256"))  # fmt: skip


__all__ = ["CombineError", "combine"]
