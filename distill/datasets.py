"""Where the task data lives, and the small demo sample that ships with the project.

One rule for every caller (app demo sets, tests, benchmarks): ``$KDLENS_DATASETS`` when set,
else ``../shared/datasets`` next to the repository when it exists (the full step-by-step
files), else the bundled sample in ``assets/data`` (at most 200 records per task, same layout).

The sample is made by ``python -m distill.datasets --source ../shared/datasets --out
assets/data`` and is deterministic: same source, same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from .data import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
SAMPLE_DATASETS = REPO_ROOT / "assets" / "data"
ENV_VAR = "KDLENS_DATASETS"

# task folder -> (records file, LLM rationale split); the layout of shared/datasets.
LAYOUT: dict[str, tuple[str, str]] = {
    "cqa": ("cqa_train.json", "train"),
    "esnli": ("esnli_valid.json", "valid"),
    "anli1": ("anli1_valid.json", "valid"),
    "svamp": ("svamp_train.json", "train"),
}
SAMPLE_SIZE = 200
SAMPLE_SEED = 0
# The first records of each file stay in the sample, so it starts like the full file
# (documentation and tests quote them); the rest are a seeded draw.
SAMPLE_KEEP_FIRST = 3


@dataclass(frozen=True)
class DatasetsLocation:
    path: Path
    kind: str  # 'env' | 'shared' | 'sample'

    def describe(self) -> str:
        what = {
            "env": f"${ENV_VAR}",
            "shared": "full task data",
            "sample": f"bundled demo sample (at most {SAMPLE_SIZE} records per task)",
        }[self.kind]
        return f"{what}: {self.path}"


def resolve_datasets() -> DatasetsLocation:
    """The datasets folder by the one rule above, with where it came from."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"${ENV_VAR}={env} is not a folder")
        return DatasetsLocation(path, "env")
    if SHARED_DATASETS.is_dir():
        return DatasetsLocation(SHARED_DATASETS, "shared")
    return DatasetsLocation(SAMPLE_DATASETS, "sample")


def datasets_dir() -> Path:
    """``$KDLENS_DATASETS``, else ``../shared/datasets`` when present, else ``assets/data``."""
    return resolve_datasets().path


def missing_files(folder: str | Path) -> list[str]:
    """The task files (relative paths) a datasets folder lacks; empty when complete."""
    folder = Path(folder)
    missing = []
    for task, (name, split) in LAYOUT.items():
        if not (folder / task / name).is_file():
            missing.append(f"{task}/{name}")
        if not (folder / task / "llm" / f"{split}_CoT_0.json").is_file():
            missing.append(f"{task}/llm/{split}_CoT_0.json")
    return missing


# ---------------------------------------------------------------------------------------------
# Making the sample


@dataclass
class SampleReport:
    task: str
    source_records: int
    indices: list[int]  # 0-based record indices in the source file, ascending
    bytes: int


def sample_indices(n: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[int]:
    """Ascending record indices: the first few, then a seeded draw from the rest."""
    if n <= size:
        return list(range(n))
    keep = list(range(min(SAMPLE_KEEP_FIRST, size)))
    rest = random.Random(seed).sample(range(len(keep), n), size - len(keep))
    return sorted(keep + rest)


def _read_llm(task_dir: Path, split: str) -> list[str]:
    from .data import load_llm_rationales

    return load_llm_rationales(task_dir, split, raw=True)


def make_sample(
    source: str | Path,
    out: str | Path,
    size: int = SAMPLE_SIZE,
    seed: int = SAMPLE_SEED,
    tasks: list[str] | None = None,
) -> list[SampleReport]:
    """Write ``out/<task>/<file>`` and ``out/<task>/llm/<split>_CoT_0.json`` for each task.

    Records are copied byte for byte (their source lines); the LLM rationale file is
    re-indexed so that entry i belongs to sampled record i, as in the full layout.
    """
    source, out = Path(source), Path(out)
    reports = []
    for task in tasks or list(LAYOUT):
        name, split = LAYOUT[task]
        src_file = source / task / name
        if not src_file.is_file():
            raise DataError(f"source file not found: {src_file}")
        lines = [ln for ln in src_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        llm = _read_llm(source / task, split)
        if len(llm) != len(lines):
            raise DataError(
                f"{task}: {len(lines)} records but {len(llm)} LLM rationales; they must align"
            )
        idx = sample_indices(len(lines), size, seed)
        dst = out / task
        (dst / "llm").mkdir(parents=True, exist_ok=True)
        for old in (dst / "llm").glob(f"{split}_CoT_*.json"):
            old.unlink()  # a rerun replaces, never mixes, rationale files
        body = "".join(lines[i] + "\n" for i in idx)
        (dst / name).write_text(body, encoding="utf-8")
        llm_text = json.dumps([llm[i] for i in idx], ensure_ascii=False, indent=0) + "\n"
        (dst / "llm" / f"{split}_CoT_0.json").write_text(llm_text, encoding="utf-8")
        size_b = len(body.encode()) + len(llm_text.encode())
        reports.append(SampleReport(task, len(lines), idx, size_b))
    manifest = {
        "made_by": f"python -m distill.datasets --source <shared/datasets> --out <dir> "
        f"--size {size} --seed {seed}",
        "size": size,
        "seed": seed,
        "keep_first": SAMPLE_KEEP_FIRST,
        "tasks": {r.task: {"source_records": r.source_records, "indices": r.indices}
                  for r in reports},
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distill.datasets",
        description="Write the demo sample of each task (deterministic) from the full data.",
    )
    ap.add_argument("--source", default=str(SHARED_DATASETS), help="folder like shared/datasets")
    ap.add_argument("--out", default=str(SAMPLE_DATASETS), help="sample folder to (re)write")
    ap.add_argument("--size", type=int, default=SAMPLE_SIZE, help="records per task")
    ap.add_argument("--seed", type=int, default=SAMPLE_SEED)
    args = ap.parse_args(argv)
    if args.size < 1:
        print("error: --size must be at least 1", file=sys.stderr)
        return 2
    try:
        reports = make_sample(args.source, args.out, args.size, args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in reports:
        print(f"{r.task}: {len(r.indices)} of {r.source_records} records, {r.bytes / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
