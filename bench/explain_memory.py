"""Peak memory of one Explain (issue 9) against answer length and prompt length, before/after.

Each point is one Explain exactly as the app's Explain tab runs it (``explain.pipeline.explain``
with the default rationale settings, saliency, ``rows="answer"`` plus ``token_matrix=True``,
given answer, template ``free``) in a FRESH subprocess, so points cannot pollute each other:

- the model is loaded (``load_model(spec)``, dtype ``auto``: fp32 SmolLM2, bf16 Qwen);
- every weight is read once (the pack's safetensors are memory-mapped: a fresh load is mostly
  not resident, and the first Explain would otherwise count the weights' pages as its own);
- the RSS then is read (``VmRSS``) and the peak is reset (``/proc/self/clear_refs``
  ``5``, which also resets ``getrusage(RUSAGE_SELF).ru_maxrss``), so the peak is the Explain's;
- after the Explain, ``ru_maxrss`` is the absolute peak; ``peak - rss_after_load`` is reported.

"after" is this tree's code (the decoder layers checkpointed during the attribution forward,
answer rows in chunks sized from ``KDLENS_ATTR_MEMORY_MB``, the heatmap capped at
``explain.limits.MAX_HEATMAP_ROWS`` rows). "before" is the real code of ``--before`` (default
``BEFORE_REV``, main before this change: row chunks but no checkpointing), extracted with
``git archive`` into a temporary folder and imported by the point's subprocess in place of this
tree's ``explain`` package. Every point records the code commit it ran.

Sweeps: answer length 1..64 tokens at a ~256-token prompt, prompt length 64..4096 tokens at an
~8-token answer (the actual token counts are recorded). A point over ``--max-point-s`` skips the
larger points of its sweep; one over ``--timeout`` is killed and recorded as such.

``--concurrent``: two maximal requests at once (the compute slots' limit is 2) in one process
with the packs of ``--pair`` loaded; the peak above the loaded models is reported. "Maximal" is
the limits: a task input of ``MAX_INPUT_TOKENS`` tokens and a given answer of
``MAX_ANSWER_CHARS`` characters.

    nice -n 19 python bench/explain_memory.py                      # both packs, both sweeps
    nice -n 19 python bench/explain_memory.py --models smollm2-135m-instruct --sweeps answer
    nice -n 19 python bench/explain_memory.py --concurrent --pair smollm2-135m-instruct \\
        smollm2-135m-instruct
    python bench/explain_memory.py --plot-only                     # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct")
ANSWER_LENGTHS = (1, 2, 4, 8, 16, 32, 64)
PROMPT_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
FIXED_PROMPT, FIXED_ANSWER = 256, 8
BEFORE_REV = "0fd3a7b"  # main before layer checkpointing and the heatmap cap (issue 9)
CODE_ENV = "KDLENS_BENCH_CODE"  # a folder whose explain package a point imports instead
OUT = ROOT / "bench" / "results" / "explain_memory.json"
FILLER = (
    "The committee met on a rainy Tuesday to review the harbour plans, and after a long debate "
    "about costs, tides and the old lighthouse, most members agreed that the northern pier "
    "should be rebuilt first while the fishing boats used the southern quay for one season. "
)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def reset_peak() -> None:
    """Reset the kernel's high-water mark (VmHWM and ru_maxrss) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def text_of_tokens(loaded, n: int, start: int = 0) -> str:
    """About ``n`` tokens of filler text (decoded from ``n`` filler token ids)."""
    tok = loaded.tokenizer
    ids = tok(FILLER * (n // 40 + 2), add_special_tokens=False)["input_ids"]
    return tok.decode(ids[start : start + n])


def request(loaded, prompt_tokens: int, answer_tokens: int) -> tuple[dict, str]:
    """Fields whose rendered prompt has about ``prompt_tokens`` tokens, and a given answer of
    about ``answer_tokens`` tokens."""
    from explain.pipeline import build_prompt, encode_prompt

    def length(n: int) -> int:
        p = build_prompt(loaded, "free", {"text": text_of_tokens(loaded, n)})
        return len(encode_prompt(loaded, p, 0).ids)

    overhead = length(16) - 16  # chat header and cue around the input
    n = max(1, prompt_tokens - overhead)
    answer = text_of_tokens(loaded, answer_tokens, start=7)
    return {"text": text_of_tokens(loaded, n)}, answer


def make_resident(loaded) -> float:
    """Read every weight once; the RSS before that (MB). The pack's safetensors are memory-mapped,
    so a fresh load is mostly not resident yet: without this, the first Explain's peak would
    count the weights' pages (3 GB for the Qwen pack) as the Explain's memory."""
    import torch

    before = rss_mb()
    with torch.no_grad():
        for t in [*loaded.model.parameters(), *loaded.model.buffers()]:
            t.float().sum() if t.numel() < 2**20 else t.sum()
    return before


def count_chunks() -> list[int]:
    """Record the rows of every vectorised backward (explain.attr.gradient._grad_rows)."""
    from explain.attr import gradient

    sizes: list[int] = []
    inner = gradient._grad_rows

    def wrapped(out, x, rows, keep):
        sizes.append(len(rows))
        return inner(out, x, rows, keep)

    gradient._grad_rows = wrapped
    return sizes


def run_point(spec: str, prompt_tokens: int, answer_tokens: int) -> dict:
    """One Explain in this (fresh) process; its memory figures."""
    import gc

    if os.environ.get(CODE_ENV):  # the "before" code, imported in place of this tree's
        sys.path.insert(0, os.environ[CODE_ENV])
    import torch

    from explain.models import load_model
    from explain.pipeline import explain

    assert (
        Path(sys.modules["explain"].__file__).parents[1]
        == Path(os.environ.get(CODE_ENV) or ROOT).resolve()
    )
    t0 = time.perf_counter()
    loaded = load_model(spec)
    load_s = time.perf_counter() - t0
    rss_mapped = make_resident(loaded)
    fields, answer = request(loaded, prompt_tokens, answer_tokens)
    chunks = count_chunks()
    gc.collect()
    base = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    result = explain(loaded, fields, template="free", answer=answer, token_matrix=True)
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    return {
        "prompt_tokens": len(result.input_ids),
        "answer_tokens": len(result.output_ids),
        "rss_after_load_mb": round(base, 1),  # weights resident (make_resident)
        "rss_after_load_mapped_mb": round(rss_mapped, 1),  # straight after load_model
        "peak_mb": round(peak, 1),
        "peak_above_load_mb": round(peak - base, 1),
        "seconds": round(seconds, 2),
        "load_seconds": round(load_s, 2),
        "chunks": chunks,  # rows per backward: the answer row, then the per-token rows
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "budget_env": os.environ.get("KDLENS_ATTR_MEMORY_MB"),
        "warnings": result.warnings,
        "heatmap_rows": len(result.matrix),
    }


def head_commit() -> str:
    """This tree's commit, with ``+dirty`` when its code differs from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run([*git, "status", "--porcelain", "explain", "bench/explain_memory.py"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return head + ("+dirty" if dirty else "")


def before_code(rev: str) -> Path:
    """The code of ``rev`` in a temporary folder (``git archive``; the repository is untouched)."""
    import tempfile

    where = Path(tempfile.mkdtemp(prefix=f"kdlens-before-{rev}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "explain"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def spawn(args: list[str], env: dict, timeout: float) -> dict:
    """Run this script in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": round(time.perf_counter() - t0, 1)}
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        killed = proc.returncode < 0 or proc.returncode == 137
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"status": "killed" if killed else "failed", "returncode": proc.returncode,
                "error": " | ".join(tail), "wall_s": wall}  # fmt: skip
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def sweep(spec: str, kind: str, args, results: list[dict], save) -> None:
    """One sweep of one model, before and after at each point, smallest first."""
    lengths = ANSWER_LENGTHS if kind == "answer" else PROMPT_LENGTHS
    lengths = tuple(args.lengths) if args.lengths else lengths
    for n in lengths:
        prompt, answer = (FIXED_PROMPT, n) if kind == "answer" else (n, FIXED_ANSWER)
        slow = False
        for mode in args.modes:
            env = {k: v for k, v in os.environ.items() if not k.startswith("KDLENS_ATTR")}
            env.pop(CODE_ENV, None)
            if mode == "before":
                env[CODE_ENV] = str(args.before_dir)
            elif args.after_dir:
                env[CODE_ENV] = str(args.after_dir)
            r = spawn(["--point", spec, str(prompt), str(answer)], env, args.timeout)
            code = args.before if mode == "before" else args.code
            r = {"model": spec, "sweep": kind, "mode": mode, "target_prompt": prompt,
                 "target_answer": answer, "code": code, **r}  # fmt: skip
            results.append(r)
            save()
            print(json.dumps(r), flush=True)
            slow = slow or r["status"] != "ok" or r.get("seconds", 0) > args.max_point_s
        if slow:
            for m in lengths[lengths.index(n) + 1 :]:
                p, a = (FIXED_PROMPT, m) if kind == "answer" else (m, FIXED_ANSWER)
                results.append({"model": spec, "sweep": kind, "mode": "both",
                                "target_prompt": p, "target_answer": a, "status": "skipped",
                                "why": f"a smaller point took over {args.max_point_s:.0f} s "
                                       "or failed"})  # fmt: skip
            save()
            return


def maximal_request(loaded) -> tuple[dict, str]:
    """The largest request the limits admit: ``MAX_INPUT_TOKENS`` task-input tokens (under
    ``MAX_INPUT_CHARS``) and a given answer of ``MAX_ANSWER_CHARS`` characters."""
    from explain.limits import MAX_ANSWER_CHARS, MAX_INPUT_CHARS, check_input, check_tokens

    n = max_tokens(loaded)
    text = text_of_tokens(loaded, n)
    while len(text) > MAX_INPUT_CHARS or check_tokens_quiet(loaded, text) > n:
        n -= 16
        text = text_of_tokens(loaded, n)
    answer = (FILLER * (MAX_ANSWER_CHARS // len(FILLER) + 1))[:MAX_ANSWER_CHARS].strip()
    fields = {"text": text}
    check_input(fields, answer)
    check_tokens(loaded.tokenizer, fields)
    return fields, answer


def max_tokens(loaded) -> int:
    """The task-input token limit for ``loaded`` (per model where the limits have one)."""
    from explain import limits

    fn = getattr(limits, "max_input_tokens", None)
    return fn(loaded) if fn else limits.MAX_INPUT_TOKENS


def check_tokens_quiet(loaded, text: str) -> int:
    return len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def run_concurrent(specs: list[str]) -> dict:
    """Two maximal requests at once in this process, with their packs loaded."""
    import gc

    from explain.models import load_model
    from explain.pipeline import explain

    models = {s: load_model(s) for s in dict.fromkeys(specs)}
    for m in models.values():
        make_resident(m)
    reqs = {s: maximal_request(models[s]) for s in models}
    chunks = count_chunks()
    gc.collect()
    base = rss_mb()
    reset_peak()
    out: dict = {}

    def one(i: int, spec: str) -> None:
        t0 = time.perf_counter()
        try:
            fields, answer = reqs[spec]
            r = explain(models[spec], fields, template="free", answer=answer, token_matrix=True)
            out[i] = {"model": spec, "prompt_tokens": len(r.input_ids),
                      "answer_tokens": len(r.output_ids), "heatmap_rows": len(r.matrix),
                      "warnings": r.warnings, "status": "ok"}  # fmt: skip
        except Exception as e:  # noqa: BLE001 - recorded, the other request goes on
            out[i] = {"model": spec, "status": "failed", "error": repr(e)[:300]}
        out[i]["seconds"] = round(time.perf_counter() - t0, 1)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = peak_mb()
    return {
        "requests": [out[i] for i in sorted(out)],
        "rss_models_loaded_mb": round(base, 1),
        "peak_mb": round(peak, 1),
        "peak_above_models_mb": round(peak - base, 1),
        "chunks": chunks,
        "budget_env": os.environ.get("KDLENS_ATTR_MEMORY_MB"),
    }


def machine() -> str:
    return f"{os.cpu_count()} CPUs, {os.uname().machine}, shared, lowest-weight autogroup"


def plot(data: dict, png: Path) -> None:
    """Two panels (answer sweep, prompt sweep): peak above load, per pack, before/after."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"answer length (prompt ~{FIXED_PROMPT} tokens)",
        f"prompt length (answer ~{FIXED_ANSWER} tokens)"))  # fmt: skip
    colors = {MODELS[0]: "#1f77b4", MODELS[1]: "#d62728"}
    shown: set[str] = set()  # legend entries drawn (once, in whichever panel has the curve)
    for col, kind in ((1, "answer"), (2, "prompt")):
        for spec in MODELS:
            for mode, dash in (("after", "solid"), ("before", "dash")):
                pts = [r for r in data["points"] if r["model"] == spec and r["sweep"] == kind
                       and r["mode"] == mode and r["status"] == "ok"]  # fmt: skip
                length = "answer_tokens" if kind == "answer" else "prompt_tokens"
                # One point per length, the last measured (runs of several commits append).
                pts = sorted({r[length]: r for r in pts}.values(), key=lambda r: r[length])
                if not pts:
                    continue
                x = [r[length] for r in pts]
                fig.add_trace(go.Scatter(
                    x=x, y=[r["peak_above_load_mb"] for r in pts], mode="lines+markers",
                    name=f"{spec.split('-')[0]} {mode}", legendgroup=f"{spec}{mode}",
                    showlegend=f"{spec}{mode}" not in shown,
                    line={"color": colors[spec], "dash": dash}),
                    row=1, col=col)  # fmt: skip
                shown.add(f"{spec}{mode}")
        if kind == "prompt":  # one prompt length, checkpointing off and on, by hand
            for r in data["points"]:
                if r["sweep"] == "checkpoint_toggle" and r["status"] == "ok":
                    fig.add_trace(go.Scatter(
                        x=[r["prompt_tokens"]], y=[r["peak_above_load_mb"]], mode="markers",
                        name=f"{r['model'].split('-')[0]} {r['mode']} (by hand)",
                        marker={"symbol": "diamond", "size": 10}), row=1, col=col)  # fmt: skip
        fig.update_xaxes(type="log", title_text=f"{kind} tokens", row=1, col=col)
        fig.update_yaxes(title_text="peak RSS above the loaded model (MB)", row=1, col=col)
    fig.update_layout(width=1200, height=520, template="plotly_white",
                      title="Peak memory of one Explain (saliency, token_matrix, CPU)")  # fmt: skip
    render_png(fig, png)


def render_png(fig, png: Path) -> None:
    """Kaleido when installed, else the HTML in headless chromium (as tests/test_browser.py)."""
    try:
        fig.write_image(str(png))
        return
    except (ImportError, ValueError, RuntimeError):  # no (or an old) kaleido
        pass
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        fig.write_html(str(html), include_plotlyjs=True, full_html=True)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                  args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
            page = b.new_page(viewport={"width": 1220, "height": 540})
            page.goto(html.as_uri(), timeout=600_000)  # a loaded shared CPU is slow
            page.wait_for_selector(".main-svg", timeout=600_000)
            page.screenshot(path=str(png), full_page=True)
            b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sweeps", nargs="+", default=["answer", "prompt"],
                    choices=["answer", "prompt"])  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600, help="kill a point after this (s)")
    ap.add_argument(
        "--max-point-s",
        type=float,
        default=180,
        help="a point slower than this skips the larger points of its sweep",
    )
    ap.add_argument("--lengths", type=int, nargs="+", help="only these lengths of the sweeps")
    ap.add_argument("--modes", nargs="+", default=["after", "before"], choices=["after", "before"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fresh", action="store_true", help="drop the stored points of these runs")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="add the points of these result files (runs made in parallel)",
    )
    ap.add_argument("--concurrent", action="store_true",
                    help="two maximal requests at once (the packs of --pair)")  # fmt: skip
    ap.add_argument("--pair", nargs=2, default=[MODELS[0], MODELS[0]],
                    help="the packs of the two concurrent requests")  # fmt: skip
    ap.add_argument("--before", default=BEFORE_REV, help="the commit measured as 'before'")
    ap.add_argument(
        "--after",
        help="measure this commit as 'after' (default: this tree), so that edits made while a "
        "long sweep runs cannot leak into its points",
    )
    ap.add_argument(
        "--point", nargs=3, metavar=("SPEC", "PROMPT", "ANSWER"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), int(args.point[2]))))
        return
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"points": []}
    png = args.out.with_suffix(".png")

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n")

    for other in args.merge:
        data["points"] += json.loads(other.read_text())["points"]
        key = lambda r: (r["model"], r["sweep"], r["target_prompt"], r["target_answer"])  # noqa: E731
        measured = {key(r) for r in data["points"] if r["status"] != "skipped"}
        data["points"] = [r for r in data["points"]
                          if r["status"] != "skipped" or key(r) not in measured]  # fmt: skip
        data["points"].sort(key=lambda r: (r["model"], r["sweep"], r["target_prompt"],
                                           r["target_answer"], r["mode"]))  # fmt: skip
        save()
    if args.concurrent:
        r = run_concurrent(args.pair)
        data.setdefault("concurrent", []).append(
            {"pair": args.pair, "code": head_commit(), "machine": machine(), **r}
        )
        save()
        print(json.dumps(r, indent=1))
        return
    if not args.plot_only:
        args.code = args.after or head_commit()
        args.after_dir = before_code(args.after) if args.after else None
        args.before_dir = before_code(args.before)
        data["machine"] = machine()
        data["before"] = f"the code of {args.before} (row chunks, no layer checkpointing)"
        data["after"] = (
            "this tree (layer checkpointing, row chunks, heatmap cap), each point's code"
        )
        for spec in args.models:
            for kind in args.sweeps:
                if args.fresh:
                    keep = [r for r in data["points"] if (r["model"], r["sweep"]) != (spec, kind)]
                    data["points"] = keep
                sweep(spec, kind, args, data["points"], save)
    plot(data, png)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
