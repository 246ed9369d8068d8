"""``python -m explain``: fetch model packs, attribute one answer in the terminal."""

from __future__ import annotations

import argparse
import json

from . import packs
from .attr import METHODS
from .errors import InputError, OneLineParser, run_cli
from .rationale import AGGREGATES, RATIONALE_DEFAULTS, ROWS
from .result import AttributionResult
from .words import PIECE_AGGREGATIONS

DTYPES = ["auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"]  # models.resolve_dtype


def fields_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """Pick the template from which input flags were given."""
    if args.question is not None:
        if args.choices is not None:
            return "cqa", {"question": args.question, "choices": args.choices}
        return "free", {"text": args.question}
    if args.premise is not None or args.hypothesis is not None:
        if not args.premise or not args.hypothesis:
            raise InputError("give both --premise and --hypothesis")
        return "nli", {"premise": args.premise, "hypothesis": args.hypothesis}
    if args.text is not None:
        return "free", {"text": args.text}
    raise InputError("give --question (with optional --choices), --premise/--hypothesis or --text")


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have before any model load (``--device cuda:7``
    and ``--device 'gpu!!'`` failed inside the load with torch's own exception)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise InputError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise InputError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
    if dev.index is not None and dev.index >= n:
        raise InputError(f"device {device!r} does not exist; this machine has cuda:0..cuda:{n - 1}")


def check_whole(value: int | None, flag: str, lo: int = 1) -> None:
    """A whole-number flag at least ``lo`` (None: the default)."""
    if value is not None and value < lo:
        raise InputError(f"{flag} must be at least {lo}, got {value}")


def _bar(score: float, scale: float, width: int = 24) -> str:
    n = round(abs(score) / scale * width) if scale > 0 else 0
    return ("-" if score < 0 else "#") * n


def render_text(result: AttributionResult) -> str:
    """A terminal view: answer, rationale, every task-input word with a score bar."""
    lines = [
        f"model     {result.model}",
        f"method    {result.method}  (aggregate {result.settings.get('aggregate')}, "
        f"{result.seconds:.2f} s)",
        f"answer    {result.answer}" + ("  [given]" if result.target == "given" else ""),
        f"rationale {result.rationale_text}",
    ]
    for w in result.warnings:
        lines.append(f"warning   {w}")
    for key, val in result.extras.items():
        lines.append(f"{key:<9} {val:.4f}" if isinstance(val, float) else f"{key:<9} {val}")
    words = [w for w in result.words if w.is_input and not w.is_punct]
    scale = max((abs(w.score) for w in words), default=0.0)
    chosen = {(w.start, w.end) for w in result.rationale}
    lines.append("")
    for w in words:
        mark = "*" if (w.start, w.end) in chosen else " "
        lines.append(f"{mark} {w.text[:20]:<20} {w.score:+.4e} {_bar(w.score, scale)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m explain", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="fetch, verify and convert model packs ahead of time")
    f.add_argument("packs", nargs="*", help=f"pack names (default: all): {', '.join(packs.PACKS)}")

    a = sub.add_parser("attribute", help="explain one answer of a model")
    a.add_argument("--model", default=packs.DEFAULT_TEACHER, help="pack name, folder or hub id")
    a.add_argument("--question", help="a question (multiple choice with --choices)")
    a.add_argument("--choices", help='choices separated by "|", e.g. "a|b|c|d|e"')
    a.add_argument("--premise")
    a.add_argument("--hypothesis")
    a.add_argument("--text", help="any free text prompt")
    a.add_argument("--answer", help="attribute this answer instead of the generated one")
    d = RATIONALE_DEFAULTS  # the same defaults as the app and extraction
    a.add_argument("--method", default=d.method, choices=sorted(METHODS))
    a.add_argument("--top-k", type=int, default=d.top_k)
    a.add_argument("--rows", default=d.rows, choices=list(ROWS), help="per answer token or one")
    a.add_argument(
        "--aggregate", default=d.aggregate, choices=list(AGGREGATES), help="over answer rows"
    )
    a.add_argument(
        "--piece-aggregation",
        default=d.piece_aggregation,
        choices=list(PIECE_AGGREGATIONS),
        help="a word's score from its subword pieces",
    )
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--steps", type=int, help="integrated_gradients: number of steps")
    a.add_argument("--baseline", choices=["zero", "pad"], help="IG/occlusion reference")
    a.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    a.add_argument("--dtype", default="auto", choices=DTYPES)
    a.add_argument("--no-chat-template", action="store_true")
    a.add_argument("--json", action="store_true", help="print exactly the result object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(_run, args)


def _run(args: argparse.Namespace) -> int:
    from .progress import StageBars

    if args.command == "fetch":
        for name in args.packs or list(packs.PACKS):
            bars = StageBars()  # tqdm bars on stderr: download (bytes, %), checksum, convert
            path = packs.ensure(name, bars)
            bars.close()
            print(path)
        return 0
    from .limits import check_input, check_tokens
    from .models import load_model
    from .pipeline import explain
    from .templates import render

    # Every setting is checked before the model loads (a load can take half a minute).
    template, fields = fields_from_args(args)
    check_input(fields, args.answer)  # a 100k-character question: refused at once
    if args.answer is not None and not args.answer.strip():
        raise InputError("the given answer is empty")
    render(template, fields)
    check_device(args.device)
    check_whole(args.max_new_tokens, "--max-new-tokens")
    settings = {}
    if args.steps is not None:
        if args.method != "integrated_gradients":
            raise InputError("--steps applies to integrated_gradients only")
        check_whole(args.steps, "--steps")
        settings["n_steps"] = args.steps
    if args.baseline is not None:
        if args.method not in ("integrated_gradients", "occlusion"):
            raise InputError("--baseline applies to integrated_gradients and occlusion")
        settings["baseline"] = args.baseline
    if args.top_k < 1:
        raise InputError("--top-k must be at least 1")
    from .attr import get_method

    get_method(args.method, **settings)  # its own bounds (e.g. --steps), before the load
    loaded = load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        use_chat_template=not args.no_chat_template,
        progress=StageBars(),  # tqdm on stderr: download, checksum, conversion, load
    )
    check_tokens(loaded.tokenizer, fields)
    result = explain(
        loaded,
        fields,
        template=template,
        method=args.method,
        top_k=args.top_k,
        answer=args.answer,
        max_new_tokens=args.max_new_tokens,
        how=args.aggregate,
        rows=args.rows,
        piece_aggregation=args.piece_aggregation,
        method_settings=settings,
    )
    print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else render_text(result))
    return 0
