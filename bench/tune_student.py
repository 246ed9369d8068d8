"""Tune the student recipe on the dev split only (issue 8: "a student that learns").

Each configuration trains the ``standard`` student on the experiment's training split and
reads its dev accuracy (the split is carved from the data file with the experiment's seed, as
``python -m distill experiment`` carves it). No test file is read here: the final figures come
from ``python -m distill experiment --test-data`` on held-out records.

    python bench/tune_student.py --task esnli --train-size 320 --dev-size 100 \
        --grid "lr=1e-4,2e-4,4e-4" --grid "epochs=3" --fixed chat_template=false --fixed bf16=true

Each point is one line in bench/results/tune_<task>.jsonl (settings, dev accuracy with its
95% interval, per-step seconds, wall time); a point already there is not rerun.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import TrainConfig  # noqa: E402
from distill.plan import default_data  # noqa: E402
from distill.train import train  # noqa: E402


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        out[key.strip()] = _value(val.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--student", default="smollm2-135m-instruct")
    p.add_argument("--train-size", type=int, default=320)
    p.add_argument("--dev-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="append", default=[], help="name=v1,v2 (TrainConfig field)")
    p.add_argument("--fixed", action="append", default=[], help="name=value (TrainConfig field)")
    p.add_argument("--out", default=None, help="results file (default bench/results/...)")
    args = p.parse_args(argv)

    data = args.data or default_data(args.task)
    out = Path(args.out or Path(__file__).parent / "results" / f"tune_{args.task}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = []
    if out.is_file():
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    axes = {}
    for g in args.grid:
        key, _, vals = g.partition("=")
        axes[key.strip()] = [_value(v.strip()) for v in vals.split(",")]
    fixed = _pairs(args.fixed)
    base = {"train_size": args.train_size, "dev_size": args.dev_size, "seed": args.seed,
            "student": args.student, "data": data}  # fmt: skip
    for combo in itertools.product(*axes.values()) if axes else [()]:
        settings = {**fixed, **dict(zip(axes, combo))}
        key = {**base, **settings}
        if any(d.get("key") == key for d in done):
            print("already measured:", settings, flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            kw = {"eval_every": 0, "save_every": 0, **settings}  # eval_every=N: a dev curve
            cfg = TrainConfig(student=args.student, task=args.task, data=data, mode="standard",
                              seed=args.seed, dev_size=args.dev_size, dev_limit=args.dev_size,
                              limit=args.train_size + args.dev_size,
                              out=str(Path(tmp) / "run"), **kw)  # fmt: skip
            t0 = time.perf_counter()
            curve: list[dict] = []

            def progress(rec: dict, curve=curve) -> None:
                if rec.get("dev_accuracy") is not None:
                    curve.append({"step": rec.get("step"), "dev_accuracy": rec["dev_accuracy"]})

            summary = train(cfg, progress=progress)
            wall = time.perf_counter() - t0
            metrics = [json.loads(line) for line in
                       (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
        steps = [m for m in metrics if "loss" in m]
        row = {
            "key": key,
            "settings": settings,
            "dev_accuracy": summary.get("accuracy"),
            "dev_ci": [summary.get("ci_low"), summary.get("ci_high")],
            "dev_choice_accuracy": summary.get("choice_accuracy"),
            "dev_n": summary.get("n"),
            "steps": len(steps),
            "s_per_step": round(steps[-1]["elapsed"] / len(steps), 3) if steps else None,
            "final_loss": steps[-1]["loss"] if steps else None,
            "curve": curve,
            "wall_s": round(wall, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("settings", "dev_accuracy", "dev_ci", "steps",
                                              "s_per_step", "wall_s")}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
