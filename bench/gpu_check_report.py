"""Collect what ``bench/gpu_check.sh`` measured into ONE file: gpu_check.json (+ gpu_check.md).

Reads the check's work folder: ``stages.tsv`` (name, start, end, exit status, timeout),
``junit.xml`` (pytest's test outcomes), ``memory.csv`` (nvidia-smi samples: timestamp, MiB used,
MiB total) and the experiment folder (plan.json, results.json, extract/ and train-*/ runs).
Everything missing is reported as missing (null), never guessed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_stages(path: Path) -> list[dict]:
    stages = []
    if not path.is_file():
        return stages
    for line in path.read_text().splitlines():
        name, t0, t1, rc, limit = line.split("\t")
        rc = int(rc)
        stages.append(
            {
                "stage": name,
                "start": float(t0),
                "end": float(t1),
                "seconds": round(float(t1) - float(t0), 2),
                "exit": rc,
                "timeout_s": int(limit),
                "timed_out": rc in (124, 137),
            }
        )
    return stages


def read_memory(path: Path) -> list[tuple[float, float, float]]:
    """(epoch seconds, MiB used, MiB total) per sample (nvidia-smi prints local time)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, float(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            continue
    return rows


def peak_mib(memory: list[tuple[float, float, float]], t0: float = 0, t1: float = 1e20):
    used = [m for t, m, _ in memory if t0 <= t <= t1]
    return max(used) if used else None


def read_tests(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    tests = []
    for case in root.iter("testcase"):
        outcome = "passed"
        message = None
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (node.get("message") or "")[:500]
                break
        tests.append(
            {
                "test": case.get("name"),
                "outcome": outcome,
                "seconds": round(float(case.get("time") or 0), 2),
                "message": message,
            }
        )
    counts = {
        k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")
    }
    return {"counts": counts, "tests": tests}


def gpu_info() -> dict:
    info: dict = {}
    try:
        import torch

        info.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
        )
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(
                name=p.name,
                total_memory_bytes=p.total_memory,
                total_memory_gib=round(p.total_memory / 2**30, 2),
                compute_capability=f"{p.major}.{p.minor}",
                bf16=torch.cuda.is_bf16_supported(),
                count=torch.cuda.device_count(),
            )
    except Exception as e:  # noqa: BLE001 - the report must be written whatever torch says
        info["error"] = str(e)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        info["driver"] = out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def suggested_batches(student: str, teacher: str) -> dict | None:
    """What distill.gpu picks for this GPU and these models (the preset may not use it yet)."""
    try:
        from distill.gpu import detect_gpu_batch_sizes

        sizes = detect_gpu_batch_sizes(student, teacher)
        return sizes.to_dict() if sizes else None
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def train_run(folder: Path) -> dict:
    summary = read_json(folder / "summary.json") or {}
    metrics = []
    path = folder / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                metrics.append(json.loads(line))
            except ValueError:
                continue
    steps = [m for m in metrics if "loss" in m]
    # The first step pays for CUDA kernel selection: rates are medians over the steps.
    eps = [m["examples_per_s"] for m in steps if m.get("examples_per_s")]
    tps = [m["tokens_per_s"] for m in steps if m.get("tokens_per_s")]
    return {
        "finished": bool(summary),
        "steps": len(steps),
        "train_loop_s": summary.get("elapsed_s"),
        "final_loss": steps[-1]["loss"] if steps else None,
        "examples_per_s": round(statistics.median(eps), 2) if eps else None,
        "tokens_per_s": round(statistics.median(tps), 1) if tps else None,
        "dev_accuracy": summary.get("accuracy"),
        "dev_choice_accuracy": summary.get("choice_accuracy"),
        "dev_n": summary.get("n"),
    }


def experiment(folder: Path, memory) -> dict | None:
    plan = read_json(folder / "plan.json")
    if plan is None:
        return None
    out: dict = {"folder": str(folder), "finished": (folder / "results.json").is_file()}
    out["sizes"] = {
        k: plan.get(k)
        for k in (
            "train_size",
            "dev_size",
            "epochs",
            "steps",
            "batch_size",
            "extract_batch",
            "dev_limit",
        )
    }
    out["teacher"], out["student"], out["modes"] = plan["teacher"], plan["student"], plan["modes"]
    ext = read_json(folder / "extract" / "summary.json")
    if ext:
        n, s = ext.get("n"), ext.get("seconds")
        out["extraction"] = {
            "n": n,
            "loop_s": round(s, 2) if s else None,
            "examples_per_s": round(n / s, 2) if n and s else None,
            "teacher_accuracy": ext.get("teacher_accuracy"),
        }
    out["training"] = {p.name: train_run(p) for p in sorted(folder.glob("train-*")) if p.is_dir()}
    # Stages run one after another: each one's time is from the previous stage's last file to
    # its own (model loads included).
    marks = [
        ("start", folder / "plan.json"),
        ("extract", folder / "extract" / "summary.json"),
        ("zero-shot", folder / "eval-zero-shot-s0.json"),
    ]
    marks += [(f"train {m}", folder / f"train-{m}-s0" / "summary.json") for m in plan["modes"]]
    marks += [("table", folder / "results.json")]
    times, last = {}, None
    for name, path in marks:
        if not path.is_file():
            continue
        t = path.stat().st_mtime
        if last is not None:
            times[name] = {"seconds": round(t - last, 2), "peak_gpu_mib": peak_mib(memory, last, t)}
        last = t
    out["stage_times"] = times
    results = read_json(folder / "results.json")
    if results:
        out["evaluation"] = results.get("evaluation")
        out["models"] = [
            {
                k: m.get(k)
                for k in ("name", "mode", "accuracy", "ci_low", "ci_high", "choice_accuracy", "n")
            }
            for m in results.get("models", [])
        ]
        out["paired"] = results.get("paired")
    md = folder / "results.md"
    out["results_md"] = md.read_text(encoding="utf-8") if md.is_file() else None
    return out


def markdown(rep: dict) -> str:
    g = rep["gpu"]
    lines = [
        f"# GPU check ({rep['finished']})",
        "",
        f"**{rep['status']}** in {rep['total_s']} s (budget {rep['budget_s']} s). "
        f"GPU: {g.get('name')} ({g.get('total_memory_gib')} GiB), driver {g.get('driver')}, "
        f"torch {g.get('torch')}, CUDA {g.get('cuda')}. Peak GPU memory "
        f"{rep['peak_gpu_mib']} MiB.",
        "",
        "| stage | s | exit | peak GPU MiB |",
        "|---|---|---|---|",
    ]
    for s in rep["stages"]:
        lines.append(f"| {s['stage']} | {s['seconds']} | {s['exit']} | {s['peak_gpu_mib']} |")
    t = rep.get("tests")
    if t:
        lines += ["", f"Tests (`pytest -m cuda`): {t['counts']}", ""]
        lines += [f"- {x['outcome']}: {x['test']} ({x['seconds']} s)" for x in t["tests"]]
    e = rep.get("experiment")
    if e:
        lines += ["", f"Experiment (e-SNLI, gpu preset, reduced: {e['sizes']}):", ""]
        if e.get("extraction"):
            lines.append(f"- extraction: {e['extraction']}")
        for name, r in e["training"].items():
            lines.append(
                f"- {name}: {r['steps']} steps, {r['examples_per_s']} examples/s, "
                f"dev accuracy {r['dev_accuracy']}"
            )
        for name, st in e["stage_times"].items():
            lines.append(f"- stage {name}: {st['seconds']} s")
        if e.get("results_md"):
            lines += ["", e["results_md"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("--results", type=Path, required=True)
    a.add_argument("--budget", type=int, required=True)
    a.add_argument("--start", type=float, required=True)
    a.add_argument("--status", required=True)
    a.add_argument("--exp", type=Path, required=True)
    args = a.parse_args()
    memory = read_memory(args.work / "memory.csv")
    stages = read_stages(args.work / "stages.tsv")
    for s in stages:
        s["peak_gpu_mib"] = peak_mib(memory, s["start"], s["end"])
    gpu = gpu_info()
    exp = experiment(args.exp, memory)
    rep = {
        "status": args.status,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_s": round(time.time() - args.start, 1),
        "budget_s": args.budget,
        "gpu": gpu,
        "peak_gpu_mib": peak_mib(memory),
        "idle_gpu_mib": memory[0][1] if memory else None,
        "stages": stages,
        "tests": read_tests(args.work / "junit.xml"),
        "experiment": exp,
        "suggested_batch_sizes": suggested_batches(
            (exp or {}).get("student", "smollm2-135m-instruct"),
            (exp or {}).get("teacher", "qwen2.5-coder-1.5b-instruct"),
        ),
        "commands": {
            "check": "bash bench/gpu_check.sh",
            "tests": "python -m pytest -m cuda -q tests/test_cuda.py",
            "experiment": "python -m distill experiment --task esnli --preset gpu "
            "--train-size N --dev-size D --out DIR (N, D: see experiment.sizes)",
        },
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_check.json").write_text(json.dumps(rep, indent=2) + "\n")
    (args.results / "gpu_check.md").write_text(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
