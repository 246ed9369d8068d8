"""Check: with answer-first prompts, the teacher's attributed span is an answer, per task.

For each task, the first N examples of its data file (default 8) go through the teacher with
its own generated answer (the extraction path: answer-first template, generation capped by the
task's longest gold answer + 8 tokens and stopped at the end of the first line, attribution on
the answer span only). The script records the raw generation, the attributed text, whether
that text is an answer in the task's fixed form (an option, a label word, an arithmetic
expression), and whether it is right.

    python bench/answer_spans.py --n 8          # Qwen pack teacher, ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import default_path, load_task  # noqa: E402
from distill.metrics import score_answer  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from explain.formatting import answer_budget, build_source  # noqa: E402
from explain.io import atomic_write_text  # noqa: E402
from explain.models import load_model  # noqa: E402
from explain.pipeline import explain_batch, generate  # noqa: E402
from explain.templates import get_template  # noqa: E402

TASKS = ("cqa", "esnli", "anli1", "svamp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "answer_spans"))
    args = ap.parse_args()

    teacher = load_model(args.teacher)
    rows, table = [], []
    for task in TASKS:
        spec = get_task(task)
        examples = load_task(task, default_path(task, args.datasets), limit=200)
        cap = answer_budget(teacher, [e.label for e in examples])
        chosen = examples[: args.n]
        t0 = time.perf_counter()
        # The raw answer-first generation, before the answer span is cut out of it.
        sources = [build_source(teacher, spec.template, e.fields, 2048).ids for e in chosen]
        raw = generate(teacher, sources, cap)
        results = explain_batch(teacher, [e.fields for e in chosen], spec.template,
                                "saliency", 5, max_new_tokens=cap)  # fmt: skip
        seconds = time.perf_counter() - t0
        n_form = n_right = 0
        for ex, r, g in zip(chosen, results, raw):
            span = get_template(spec.template).answer_span(r.answer, ex.fields)
            is_answer = span is not None and span[1] - span[0] >= 0.6 * len(r.answer)
            right = score_answer(task, r.answer, ex)
            n_form += is_answer
            n_right += right
            rows.append({"task": task, "id": ex.id, "generated": teacher.tokenizer.decode(g),
                         "attributed": r.answer, "is_answer": is_answer, "correct": right,
                         "gold": ex.label, "rationale": [w.text for w in r.rationale],
                         "warnings": r.warnings})  # fmt: skip
        table.append({"task": task, "n": len(chosen), "cap_tokens": cap,
                      "attributed_is_answer": n_form, "teacher_correct": n_right,
                      "seconds_per_example": round(seconds / len(chosen), 2)})  # fmt: skip
        print(json.dumps(table[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"teacher": args.teacher, "command": " ".join(sys.argv), "summary": table,
         "examples": rows}, indent=1))  # fmt: skip
    lines = ["| task | n | answer cap (tokens) | attributed span is an answer | teacher right "
             "| s / example |", "|---|---|---|---|---|---|"]  # fmt: skip
    for t in table:
        lines.append(f"| {t['task']} | {t['n']} | {t['cap_tokens']} | {t['attributed_is_answer']}"
                     f" | {t['teacher_correct']} | {t['seconds_per_example']} |")  # fmt: skip
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
