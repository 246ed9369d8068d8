"""Dataset-level rationale extraction with the teacher (the paper's step 2-3).

One JSON line per example in ``<run>/rationales.jsonl``: prompt, teacher answer and whether it
is right, top-k rationale words with scores, all word scores, settings, and ERASER faithfulness
(comprehensiveness and sufficiency of the top-k words, and of random-k words).

Batched through :func:`explain.pipeline.explain_batch`. Resumable: each process appends finished
examples to its own part file; a restart skips every id already written, so nothing is
duplicated or lost. Runs sharded across processes under ``accelerate launch``; the parts are
merged in data order at the end.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from explain.errors import KDLensError
from explain.formatting import answer_budget, task_answers
from explain.lm_scoring import Scorer, collate
from explain.models import LoadedModel
from explain.pipeline import explain_batch
from explain.rationale import RATIONALE_DEFAULTS
from explain.result import AttributionResult

from .data import Example
from .metrics import score_answer
from .rationales import RATIONALES, TARGETS
from .runs import RunDir, RunError, append_jsonl, atomic_write_text, read_jsonl
from .tasks import get_task


class ExtractError(KDLensError):
    """Extraction settings or inputs that cannot give a valid run."""


def examples_hash(examples: list[Example]) -> str:
    """sha256 over every example's id, fields, label and options, in order: two example lists
    that differ anywhere (even with the same count and data file) get different hashes."""
    h = hashlib.sha256()
    for ex in examples:
        blob = [ex.id, ex.task, ex.fields, ex.label, ex.options]
        h.update(json.dumps(blob, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def model_fingerprint(loaded: LoadedModel) -> str:
    """A hash identifying the teacher's weights, for the cache key.

    A pack's pinned sha256 when known; else the names, sizes and mtimes of a model folder's
    weight files; else (a model built in memory) names, shapes, dtypes and a content sample of
    every tensor in the state dict. Changed weights give another fingerprint, so results of
    other weights are never reused.
    """
    info = getattr(loaded, "info", None) or {}
    if info.get("pack_sha256"):
        return "pack:" + str(info["pack_sha256"])
    h = hashlib.sha256()
    folder = Path(str(loaded.spec)).expanduser()
    files = (
        sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        if folder.is_dir()
        else []
    )
    if files:
        for p in files:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "files:" + h.hexdigest()[:32]
    with torch.no_grad():
        for name, t in loaded.model.state_dict().items():
            flat = t.detach().reshape(-1)
            # A strided sample of up to 4096 values per tensor: cheap even for 1.5B weights.
            step = max(flat.numel() // 4096, 1)
            sample = flat[::step][:4096].to("cpu", torch.float64)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(sample.numpy().tobytes())
    return "state:" + h.hexdigest()[:32]


# The key itself is not hashed; every other recorded setting is.
_KEY_FREE = ("cache_key",)


def cache_key(settings: dict) -> str:
    """Identity of an extraction's output: a hash of every setting that changes a record.

    ``settings`` holds the teacher and its weight fingerprint, the examples' hash, method and
    its settings, k, target, rows, explain settings (aggregation), max new tokens, chat
    template, seed and faithfulness; the batch size is left out (results are batch-invariant).
    """
    blob = json.dumps(
        {k: v for k, v in settings.items() if k not in _KEY_FREE}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate_settings(
    examples: list[Example],
    task: str,
    method: str = "saliency",
    top_k: int = 5,
    target: str = "generated",
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    faithfulness_limit: int | None = None,
    rows: str = RATIONALE_DEFAULTS.rows,
) -> None:
    """Refuse impossible settings before any model load or folder creation (one-line errors)."""
    from explain.attr import METHODS

    get_task(task)
    if method not in METHODS:
        raise ExtractError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    for name, value in (("top-k", top_k), ("batch size", batch_size),
                        ("max new tokens", max_new_tokens)):  # fmt: skip
        if value is None and name == "max new tokens":  # the task's cap, from its answers
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExtractError(f"{name} must be a whole number of at least 1, got {value!r}")
    if target not in TARGETS:
        raise ExtractError(f"target must be 'generated' or 'gold', got {target!r}")
    if rows not in ("answer", "tokens"):
        raise ExtractError(f"rows must be 'answer' or 'tokens', got {rows!r}")
    if faithfulness_limit is not None and faithfulness_limit < 0:
        raise ExtractError(f"faithfulness limit must not be negative, got {faithfulness_limit}")
    if not examples:
        raise ExtractError("no examples to extract (empty data, split or limit)")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ExtractError(f"example id {ex.id!r} appears twice; ids must be unique")
        seen.add(ex.id)


def _drop_tokens(ids: list[int], drop: set[int]) -> list[int]:
    return [t for i, t in enumerate(ids) if i not in drop]


def faithfulness(
    teacher: LoadedModel,
    result: AttributionResult,
    prompt_ids: list[int],
    answer_ids: list[int],
    rng: random.Random,
) -> dict:
    """ERASER comprehensiveness/sufficiency of the top-k words, and of k random input words.

    The answer's probability is exp(mean token log-prob). Comprehensiveness: p(full) - p(prompt
    without the words' tokens); sufficiency: p(full) - p(template plus the words' tokens only).
    """
    inputs = [w for w in result.words if w.is_input and not w.is_punct]
    input_tokens = {i for w in result.words if w.is_input for i in w.tokens}
    k = len(result.rationale)
    chosen = {i for w in result.rationale for i in w.tokens}
    rand_words = rng.sample(inputs, min(k, len(inputs)))
    rand = {i for w in rand_words for i in w.tokens}
    variants = [
        prompt_ids,
        _drop_tokens(prompt_ids, chosen),
        _drop_tokens(prompt_ids, input_tokens - chosen),
        _drop_tokens(prompt_ids, rand),
        _drop_tokens(prompt_ids, input_tokens - rand),
    ]
    pad = teacher.tokenizer.pad_token_id
    batch = collate(variants, [answer_ids] * len(variants), pad, not teacher.is_encoder_decoder)
    scorer = Scorer(teacher, batch)
    with torch.no_grad():
        logp = scorer(scorer.prompt_embeds)
    p = logp.mean(dim=1).exp().tolist()
    return {
        "p_full": p[0],
        "comprehensiveness": p[0] - p[1],
        "sufficiency": p[0] - p[2],
        "random_comprehensiveness": p[0] - p[3],
        "random_sufficiency": p[0] - p[4],
    }


def _record(
    ex: Example,
    res: AttributionResult,
    task: str,
    correct: bool,
    faith: dict | None,
    settings: dict,
) -> dict:
    word = lambda w: {"text": w.text, "start": w.start, "end": w.end, "score": w.score}  # noqa: E731
    return {
        "id": ex.id,
        "index": ex.index,
        "task": task,
        "prompt": res.prompt,
        "fields": ex.fields,
        "label": ex.label,
        "options": ex.options,
        "human_rationale": ex.human_rationale,
        "teacher_answer": res.answer,
        "teacher_correct": correct,
        # "generated" (the teacher's own answer) or "gold": consumers check it (no gold hints)
        "target": settings["target"],
        "rationale": [word(w) for w in res.rationale],
        "words": [dict(word(w), is_input=w.is_input, is_punct=w.is_punct) for w in res.words],
        "top_k": settings["top_k"],
        "method": res.method,
        "faithfulness": faith,
        "warnings": res.warnings,
        "seconds": res.seconds,
    }


def _part_path(run: RunDir, rank: int, world: int) -> Path:
    return run.path / "parts" / f"rank{rank}-of{world}.jsonl"


def repair_tail(path: Path) -> None:
    """Cut a torn last line (a kill mid-write) so the next append starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def done_ids(run: RunDir) -> set[str]:
    parts = (run.path / "parts").glob("*.jsonl") if (run.path / "parts").is_dir() else []
    return {r["id"] for p in parts for r in read_jsonl(p)}


def merge_parts(run: RunDir, examples: list[Example]) -> list[dict]:
    """Merge every part file in data order (first record per id wins) into rationales.jsonl."""
    order = {ex.id: i for i, ex in enumerate(examples)}
    seen: dict[str, dict] = {}
    for p in sorted((run.path / "parts").glob("*.jsonl")):
        for r in read_jsonl(p):
            seen.setdefault(r["id"], r)
    records = sorted((r for r in seen.values() if r["id"] in order), key=lambda r: order[r["id"]])
    atomic_write_text(run.path / RATIONALES, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _input_chars(example) -> int:
    return sum(len(str(v)) for v in example.fields.values())


def extract(
    teacher: LoadedModel,
    examples: list[Example],
    out_dir: str | Path,
    task: str,
    method: str = "saliency",
    top_k: int = 5,
    target: str = "generated",
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    with_faithfulness: bool = True,
    faithfulness_limit: int | None = None,
    rows: str = RATIONALE_DEFAULTS.rows,
    seed: int = 0,
    method_settings: dict | None = None,
    config: dict | None = None,
    explain_settings: dict | None = None,
    progress: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
    cap_from: list[Example] | None = None,
) -> dict:
    """Extract rationales for ``examples`` into the run folder ``out_dir``; return the summary.

    Rationale settings default to :data:`explain.rationale.RATIONALE_DEFAULTS`, the ones the
    app and the explain CLI use, so a student trains on the words the app shows for the same
    question (``rows="answer"`` attributes the whole answer's log-prob in one backward pass).
    ``explain_settings`` passes further keyword settings to :func:`explain_batch` (e.g. the
    aggregation); like every setting that changes a record, they are part of the cache key.

    A finished run with the same cache key is returned as ``cached``; a finished run with
    another key is refused (RunError), never reused or overwritten.
    """
    from accelerate import PartialState

    validate_settings(
        examples, task, method, top_k, target, batch_size, max_new_tokens, faithfulness_limit, rows
    )
    spec = get_task(task)
    if max_new_tokens is None:  # the task's cap: its longest gold answer or option + a margin
        max_new_tokens = answer_budget(teacher, task_answers(cap_from or examples))
    run = RunDir(out_dir)
    settings = {
        "kind": "extract",
        "task": spec.name,
        "teacher": teacher.spec,
        "teacher_fingerprint": model_fingerprint(teacher),
        "chat_template": bool(teacher.use_chat_template),
        "method": method,
        "top_k": top_k,
        "target": target,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "n_examples": len(examples),
        "examples_sha256": examples_hash(examples),
        "method_settings": method_settings or {},
        "explain_settings": explain_settings or {},
        "faithfulness": with_faithfulness,
        "faithfulness_limit": faithfulness_limit,
        "rows": rows,
        **(config or {}),
    }
    settings["cache_key"] = cache_key(settings)
    if run.is_finished:
        old = run.config().get("cache_key")
        if old != settings["cache_key"]:
            # Never reuse a finished run made from other settings or examples, and never
            # overwrite it: the caller picks another folder.
            diff = [k for k in sorted(settings) if k != "cache_key" and k not in _KEY_FREE
                    and run.config().get(k) != settings[k]]  # fmt: skip
            raise RunError(
                f"run {run.name!r} is a finished extraction with other settings "
                f"({', '.join(diff) or 'cache key'}); use another folder"
            )
        summary = dict(run.summary() or {}, cached=True)
        if progress:
            progress(
                {
                    "stage": "extract",
                    "done": len(examples),
                    "total": len(examples),
                    "message": "cached: same teacher, weights, examples and settings",
                }
            )
        return summary
    # cpu=True without a GPU so several CPU processes (torchrun, accelerate launch) use gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        run.create(settings)  # refuses an unfinished folder with other settings
    state.wait_for_everyone()
    # Faithfulness costs four extra forward passes: optionally only on the first N examples.
    faith_ids = {ex.id for ex in examples[: faithfulness_limit or 0]}
    done = done_ids(run)
    # Batches are a pure function of the example order (never regrouped around what is done),
    # so a resumed run computes every record in the same batch as an uninterrupted one and the
    # records are identical; a batch cut by a kill is recomputed whole, its missing ids kept.
    # Sorted by input length (stable), so a batch pads little.
    mine = sorted(examples[state.process_index :: state.num_processes], key=_input_chars)
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    batches = [b for b in batches if any(ex.id not in done for ex in b)]
    part = _part_path(run, state.process_index, state.num_processes)
    repair_tail(part)
    if state.is_main_process:
        run.set_status("running", stage="extract")
    t0, n_done = time.perf_counter(), 0
    total = sum(ex.id not in done for b in batches for ex in b)
    for chunk in batches:
        if stop is not None and stop.is_set():
            break
        answers = [ex.label if target == "gold" else None for ex in chunk]
        results = explain_batch(
            teacher,
            [ex.fields for ex in chunk],
            template=spec.template,
            method=method,
            top_k=top_k,
            answers=answers,
            max_new_tokens=max_new_tokens,
            method_settings=method_settings,
            rows=rows,
            **(explain_settings or {}),
        )
        for ex, res in zip(chunk, results):
            if ex.id in done:
                continue
            faith = None
            if with_faithfulness and (faithfulness_limit is None or ex.id in faith_ids):
                rng = random.Random(f"{seed}:{ex.id}")
                faith = faithfulness(teacher, res, res.input_ids, res.output_ids, rng)
            # with the gold answer as target, the teacher's own answer is not measured
            correct = score_answer(spec, res.answer, ex) if target == "generated" else None
            append_jsonl(part, _record(ex, res, spec.name, correct, faith, settings))
            n_done += 1
        if progress:
            el = time.perf_counter() - t0
            rate = n_done / el if el > 0 else 0.0
            progress(
                {
                    "stage": "extract",
                    "done": len(done) + n_done,
                    "step": len(done) + n_done,
                    "total": len(examples),
                    "examples_per_s": rate,
                    "eta_s": (total - n_done) / rate if rate > 0 else None,
                }
            )
    state.wait_for_everyone()
    if stop is not None and stop.is_set():
        run.set_status("stopped", stage="extract", done=len(done_ids(run)))
        return {
            "status": "stopped",
            "done": len(done_ids(run)),
            "total": len(examples),
            "run_dir": str(run.path),
        }
    summary = {}
    if state.is_main_process:
        records = merge_parts(run, examples)
        correct = [r["teacher_correct"] for r in records if r["teacher_correct"] is not None]
        summary = {
            **{k: settings[k] for k in ("kind", "task", "teacher", "method", "top_k", "target")},
            "n": len(records),
            "teacher_accuracy": sum(correct) / len(correct) if correct else None,
            "seconds": time.perf_counter() - t0,
            "run_dir": str(run.path),
            "rationales": str(run.path / RATIONALES),
        }
        run.finish(summary)
    return summary
