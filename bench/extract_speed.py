"""Teacher extraction throughput (issue 8): examples/s and the fraction of this CPU's bf16
matmul peak, with today's code and the issue's baseline in the same run.

Today's path is the real one: ``distill.extract.extract`` (generation + attribution through
``explain.pipeline.explain_batch``, the default rationale settings, no faithfulness) with the
Qwen pack in bf16 over the first ``--limit`` CQA records (``--split all``), batch size 4.

The baseline is the code the issue measured (7.6 s per example): commit ``a2fec38``
(``git archive`` into a temporary folder), run as a subprocess with the issue's command
``python -m distill extract --teacher <pack folder> --task cqa --limit N --split all
--no-faithfulness`` (16-token generation without a stop at the end of the answer line, the
old prompts, batch 4, ``rows=answer``, bf16). The converted pack folder is given as the teacher
so the old code never touches the pack cache.

Peak: a 2048x2048 bf16 ``torch.matmul`` repeated (2*n^3 FLOPs each), timed before and after
the extraction passes and (shorter) after every batch, whose time is not counted as
extraction time; the mean of these probes is the peak (all are reported). On a shared CPU the
share a niced process gets changes minute to minute, so the fraction is only as steady as it.

FLOP count of the passes run (today's code; counted from the token ids the passes received):
- generation: 2 * P FLOPs per token through the model body for every prompt token (prefill)
  and every generated token, plus 2 * V * D for the vocabulary projection of each generated
  token (prefill projects only the last position);
- attribution (``rows="answer"``): one forward (2 * P per prompt + answer token, plus 2 * V * D
  for each answer position kept by ``logits_to_keep``) and one backward to the input
  embeddings. That backward needs only activation gradients (2 * P per token; weight gradients
  are not computed since ``autograd.grad`` asks for the input alone), so the pass is 4 * P per
  token. The 6 * P convention (weight gradients too) is reported as ``*_6p`` for comparison.
P is the parameter count outside the embedding and the vocabulary projection (the lookup costs
no FLOPs; the projection is the V * D term); attention's
sequence-squared terms are left out (prompts here are about 150 tokens). "useful" counts real
tokens only; "computed" counts the padded rectangles the batched passes actually ran.

    nice -n 19 python bench/extract_speed.py --limit 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import default_path, load_task  # noqa: E402
from distill.extract import extract  # noqa: E402
from explain import pipeline  # noqa: E402
from explain.io import atomic_write_text  # noqa: E402
from explain.models import load_model  # noqa: E402
from explain.packs import DEFAULT_TEACHER, converted_dir  # noqa: E402

BASELINE_COMMIT = "a2fec38"  # the code the 7.6 s per example was measured on
OUT = ROOT / "bench" / "results" / "extract_speed.json"


@dataclass
class Counts:
    """Tokens the passes received: real (useful) and padded (computed)."""

    gen_prompt: int = 0
    gen_new: int = 0
    gen_prompt_padded: int = 0
    gen_new_padded: int = 0
    attr_tokens: int = 0
    attr_answer: int = 0
    attr_tokens_padded: int = 0
    attr_answer_padded: int = 0
    gen_seconds: float = 0.0
    batches: list = field(default_factory=list)


def matmul_peak(n: int = 2048, reps: int = 20, tries: int = 3) -> float:
    """bf16 FLOP/s of a square matmul on this CPU (best of ``tries`` timed runs)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best


def instrument(counts: Counts) -> None:
    """Count the tokens of every generation and attribution pass explain_batch runs."""
    gen, scorer_cls = pipeline.generate, pipeline.Scorer

    def generate(loaded, prompts, max_new_tokens, first_line=True):
        t0 = time.perf_counter()
        out = gen(loaded, prompts, max_new_tokens, first_line)
        counts.gen_seconds += time.perf_counter() - t0
        counts.gen_prompt += sum(map(len, prompts))
        counts.gen_prompt_padded += len(prompts) * max(map(len, prompts))
        # rows stop at the end of their answer line, but the batch runs to its longest row
        # (plus the stop token): what was computed is the longest row for every row
        counts.gen_new += sum(len(a) + 1 for a in out)
        counts.gen_new_padded += len(out) * (max(len(a) for a in out) + 1)
        counts.batches.append({"prompts": [len(p) for p in prompts], "new": [len(a) for a in out]})
        return out

    class Scorer(scorer_cls):
        def __init__(self, loaded, batch, rows="tokens"):
            super().__init__(loaded, batch, rows)
            real = int(batch.prompt_mask.sum() + batch.answer_mask.sum())
            counts.attr_tokens += real
            counts.attr_answer += int(batch.answer_mask.sum())
            counts.attr_tokens_padded += batch.size * (
                batch.prompt_ids.shape[1] + batch.answer_ids.shape[1]
            )
            counts.attr_answer_padded += batch.size * batch.answer_ids.shape[1]

    pipeline.generate, pipeline.Scorer = generate, Scorer


def flops(c: Counts, p: int, vd: int, backward_per_param: int = 2) -> tuple[float, float]:
    """(useful, computed) FLOPs of the passes counted in ``c`` (see the module docstring)."""
    per = 2 + backward_per_param

    def total(prompt, new, attr, answer):
        return 2 * p * (prompt + new) + 2 * vd * new + per * p * attr + 2 * vd * answer

    useful = total(c.gen_prompt, c.gen_new, c.attr_tokens, c.attr_answer)
    computed = total(c.gen_prompt_padded, c.gen_new_padded, c.attr_tokens_padded,
                     c.attr_answer_padded)  # fmt: skip
    return useful, computed


def body_params(model) -> tuple[int, int]:
    """(P, V*D): parameters outside the embedding and the vocabulary projection (tied or not,
    the projection's FLOPs are counted separately, per position it runs on)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    p = sum(t.numel() for t in model.parameters()) - emb.numel()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        p -= head.weight.numel()
    return p, emb.numel()


def run_baseline(teacher_dir: Path, data: Path, limit: int, timeout: float) -> dict:
    """The issue's command on the code it was measured with (a subprocess, same machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE_COMMIT],
                             capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
        cmd = [sys.executable, "-m", "distill", "extract", "--teacher", str(teacher_dir),
               "--task", "cqa", "--data", str(data), "--limit", str(limit), "--split", "all",
               "--no-faithfulness", "--out", str(Path(tmp) / "run")]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"status": "failed", "error": proc.stderr.strip()[-600:]}
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        return {"status": "ok", "commit": BASELINE_COMMIT, "command": " ".join(cmd[1:]),
                "extract_seconds": summary["seconds"], "wall_seconds": wall,
                "n": summary["n"], "examples_per_s": summary["n"] / summary["seconds"],
                "teacher_accuracy": summary.get("teacher_accuracy")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default=DEFAULT_TEACHER)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-baseline", action="store_true", help="skip the old code's run")
    ap.add_argument("--baseline-timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    data = default_path("cqa", ROOT.parent / "shared" / "datasets")
    examples = load_task("cqa", data, limit=args.limit)
    peak_before = matmul_peak()
    teacher = load_model(args.teacher, dtype="bf16")
    p_body, vd = body_params(teacher.model)
    counts = Counts()
    instrument(counts)
    probes: list[float] = []
    probe_s = 0.0

    def probe(_event: dict) -> None:
        """A short matmul probe after every batch: the CPU's share changes while others run."""
        nonlocal probe_s
        t0 = time.perf_counter()
        probes.append(matmul_peak(reps=2, tries=1))
        probe_s += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = extract(teacher, examples, Path(tmp) / "run", task="cqa",
                          batch_size=args.batch_size, with_faithfulness=False,
                          progress=probe)  # fmt: skip
        seconds = time.perf_counter() - t0 - probe_s  # the probes are not extraction time
    peak_after = matmul_peak()
    probes = [peak_before, *probes, peak_after]
    peak = sum(probes) / len(probes)
    useful, computed = flops(counts, p_body, vd)
    useful6, _ = flops(counts, p_body, vd, backward_per_param=4)
    today = {
        "n": summary["n"],
        "seconds": seconds,
        "examples_per_s": summary["n"] / seconds,
        "seconds_per_example": seconds / summary["n"],
        "generation_seconds": counts.gen_seconds,
        "attribution_and_rest_seconds": seconds - counts.gen_seconds,
        "teacher_accuracy": summary.get("teacher_accuracy"),
        "useful_flops": useful,
        "computed_flops": computed,
        "fraction_of_peak_useful": useful / seconds / peak,
        "fraction_of_peak_computed": computed / seconds / peak,
        "fraction_of_peak_useful_6p": useful6 / seconds / peak,
        "tokens": {k: v for k, v in asdict(counts).items() if k != "batches"},
        "batches": counts.batches,
    }
    result = {
        "command": "python bench/extract_speed.py " + " ".join(sys.argv[1:]),
        "teacher": args.teacher,
        "dtype": str(teacher.dtype).replace("torch.", ""),
        "params_non_embedding": p_body,
        "vocab_x_hidden": vd,
        "threads": torch.get_num_threads(),
        "matmul_peak_flops": {
            "before": peak_before,
            "after": peak_after,
            "mean": peak,
            "probes": probes,
        },  # fmt: skip
        "today": today,
        "issue_quote_seconds_per_example": 7.6,
    }
    print(json.dumps({k: v for k, v in today.items() if k != "batches"}, indent=1), flush=True)
    if not args.no_baseline:
        del teacher
        base = run_baseline(converted_dir(args.teacher), data, args.limit, args.baseline_timeout)
        if base["status"] == "ok":
            base["speedup_today_over_baseline"] = today["examples_per_s"] / base["examples_per_s"]
        result["baseline"] = base
        print(json.dumps(base, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
