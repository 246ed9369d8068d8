"""Benchmark: our batched input_x_gradient matrix against Captum's LLMGradientAttribution.

Same model (SmolLM2 pack), same 20 CQA prompts, same 8 answer tokens, same process. Reports
the median speed ratio, the correlation of the two matrices, and the achieved fraction of this
CPU's matmul peak (measured here, fp32).

    python bench/attribution.py [--n 20] [--answer-tokens 8] [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain.attr import get_method  # noqa: E402
from explain.lm_scoring import Scorer, collate  # noqa: E402
from explain.models import load_model  # noqa: E402
from explain.pipeline import build_prompt, encode_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def pass_flops(loaded, seq: int, logits_rows: int) -> float:
    """FLOPs of one forward (or one input-gradient backward) over `seq` tokens."""
    cfg = loaded.model.config
    emb = loaded.model.get_input_embeddings().weight.numel()
    body = loaded.n_params - emb * (1 if cfg.tie_word_embeddings else 2)
    attn = 4 * cfg.num_hidden_layers * seq * seq * cfg.hidden_size  # QK^T and AV
    return 2 * body * seq + attn + 2 * emb * logits_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cqa/cqa_train.json"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench/out/attribution.json"))
    args = ap.parse_args()

    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu")
    # Same weights in bf16: a reduced-precision variant, reported separately from the fp32 ratio.
    loaded16 = load_model(args.model, device="cpu", dtype="bf16")
    tok, model = loaded.tokenizer, loaded.model
    records = [json.loads(line) for line in open(args.data)][: args.n]
    captum = LLMGradientAttribution(
        LayerGradientXActivation(model, model.get_input_embeddings()), tok
    )
    ours = get_method("input_x_gradient")
    rows = []
    for i, rec in enumerate(records):
        prompt = build_prompt(
            loaded, "cqa", {"question": rec["question"], "choices": rec["choices"]}
        )
        ids = encode_prompt(loaded, prompt, args.answer_tokens).ids
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=args.answer_tokens,
                min_new_tokens=args.answer_tokens,
                do_sample=False,
            )
        answer = gen[0, len(ids) :].tolist()
        inp = TextTokenInput(prompt.text, tok)
        assert inp.to_tensor().numel() == len(ids), "Captum tokenized the prompt differently"

        def run_ours():
            scorer = Scorer(loaded, collate([ids], [answer], tok.pad_token_id, True))
            return ours.attribute(scorer).matrix[0]

        def run_ours_bf16():
            scorer = Scorer(loaded16, collate([ids], [answer], tok.pad_token_id, True))
            return ours.attribute(scorer).matrix[0]

        def run_captum():
            return captum.attribute(inp, target=torch.tensor(answer)).token_attr

        if i == 0:  # warm up both paths
            run_ours(), run_captum(), run_ours_bf16()
        times = {}
        for name, fn in (("ours", run_ours), ("captum", run_captum), ("bf16", run_ours_bf16)):
            t0 = time.perf_counter()
            m = fn()
            times[name] = time.perf_counter() - t0
            times[name + "_matrix"] = m.detach().float()
        a, b = times["ours_matrix"].flatten(), times["captum_matrix"].flatten()
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        c = times["bf16_matrix"].flatten()
        corr16 = float(torch.corrcoef(torch.stack([c, b]))[0, 1])
        seq = len(ids) + len(answer)
        flops_ours = pass_flops(loaded, seq, len(answer) + 1) * (1 + len(answer))
        rows.append(
            {
                "prompt_tokens": len(ids),
                "ours_s": times["ours"],
                "captum_s": times["captum"],
                "speedup": times["captum"] / times["ours"],
                "correlation": corr,
                "max_abs_diff": float((a - b).abs().max()),
                "flops_ours": flops_ours,
                "bf16_s": times["bf16"],
                "bf16_speedup": times["captum"] / times["bf16"],
                "bf16_correlation": corr16,
            }
        )
        print(
            f"{i:2d} L={len(ids):3d} ours {times['ours']:.3f}s captum {times['captum']:.3f}s "
            f"x{rows[-1]['speedup']:.2f} corr {corr:.6f} | bf16 {times['bf16']:.3f}s "
            f"x{rows[-1]['bf16_speedup']:.2f} corr {corr16:.4f}",
            flush=True,
        )
    peak = matmul_peak()
    gflops = [r["flops_ours"] / r["ours_s"] for r in rows]
    summary = {
        "model": args.model,
        "n_prompts": len(rows),
        "answer_tokens": args.answer_tokens,
        "threads": torch.get_num_threads(),
        "median_speedup": statistics.median(r["speedup"] for r in rows),
        "min_correlation": min(r["correlation"] for r in rows),
        "median_ours_s": statistics.median(r["ours_s"] for r in rows),
        "median_captum_s": statistics.median(r["captum_s"] for r in rows),
        "matmul_peak_gflops": peak / 1e9,
        "median_achieved_gflops": statistics.median(gflops) / 1e9,
        "median_peak_fraction": statistics.median(gflops) / peak,
        "bf16_median_speedup": statistics.median(r["bf16_speedup"] for r in rows),
        "bf16_min_correlation": min(r["bf16_correlation"] for r in rows),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
