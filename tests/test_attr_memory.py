"""Gradient attribution holds one chunk of Jacobian rows at a time (issue 9's memory bound).

The [rows, B, Lp, D] gradients of a chunk are reduced over the embedding dimension before the
next chunk is computed; keeping every chunk (then concatenating them) grew memory with answer
x prompt length: 4.8 GB of SmolLM2 fp32 gradients for 512 answer tokens over 4,096 prompt
tokens, twice that while concatenated.
"""

import gc
import weakref

import pytest
import torch

from explain.attr import get_method
from explain.attr import gradient as grad_mod
from explain.attr.gradient import jacobian_rows
from explain.lm_scoring import Scorer, collate
from explain.pipeline import build_prompt, encode_answer, encode_prompt, explain

CQA = {"question": "Where would you put a plate after washing it?",
       "choices": "cupboard|table|sink|restaurant|kitchen"}  # fmt: skip
ANSWER = "cupboard table in the kitchen"


def _scorer(loaded) -> Scorer:
    prompt = build_prompt(loaded, "cqa", CQA)
    ans = encode_answer(loaded, prompt, ANSWER)
    ids = encode_prompt(loaded, prompt, len(ans)).ids
    pad = loaded.tokenizer.pad_token_id
    batch = collate([ids, ids[3:]], [ans, ans[:2]], pad, not loaded.is_encoder_decoder)
    return Scorer(loaded, batch, rows="tokens")


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_one_chunk_of_gradients_alive_at_a_time(tiny, method, monkeypatch):
    monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", "0.001")  # one answer row per chunk
    alive: list[weakref.ref] = []
    inner = grad_mod._grad_rows

    def watched(out, x, rows, keep):
        gc.collect()
        held = sum(r() is not None for r in alive)
        assert held == 0, f"{held} earlier chunk(s) of [rows, B, Lp, D] gradients still held"
        g = inner(out, x, rows, keep)
        alive.append(weakref.ref(g))
        return g

    monkeypatch.setattr(grad_mod, "_grad_rows", watched)
    scorer = _scorer(tiny)
    out = get_method(method).attribute(scorer)
    assert len(alive) == scorer.n_outputs >= 4  # one chunk per answer row
    b, lp = scorer.batch.prompt_ids.shape
    assert out.matrix.shape == (b, scorer.n_outputs, lp)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_chunk_reduced_rows_equal_the_whole_jacobian(tiny, method, monkeypatch):
    scorer = _scorer(tiny)
    x = scorer.prompt_embeds
    g = jacobian_rows(scorer, x, chunk=scorer.n_outputs)  # [T, B, Lp, D] at once
    whole = g.float().norm(dim=-1) if method == "saliency" else (g * x).float().sum(dim=-1)
    for budget in ("0.001", "1e12"):  # one row per chunk, all rows in one chunk
        monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", budget)
        got = get_method(method).attribute(_scorer(tiny)).matrix
        assert torch.allclose(got, whole.transpose(0, 1), rtol=1e-5, atol=1e-7)


def test_explain_token_matrix_same_with_any_chunk(tiny, monkeypatch):
    kw = {"template": "cqa", "answer": ANSWER, "token_matrix": True}
    monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", "1e12")
    whole = explain(tiny, CQA, **kw)
    monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", "0.001")
    rows = explain(tiny, CQA, **kw)
    assert torch.allclose(torch.tensor(rows.matrix), torch.tensor(whole.matrix), rtol=1e-5,
                          atol=1e-7)  # fmt: skip
    assert [w.text for w in rows.rationale] == [w.text for w in whole.rationale]


def test_low_precision_rows_count_the_vocabulary_weight_copy():
    """Below float32 the batched backward copies the [vocab, hidden] projection once per row
    (CPU, measured: SmolLM2 bf16 +55 MB a row, 467 MB for the Qwen pack): chunks are sized
    with that copy, so a budget of 8 such copies never runs more than 4 rows at once."""
    import tiny as t
    from transformers import LlamaConfig, LlamaForCausalLM

    from explain.models import prepare

    vocab, hidden = 50_000, 256  # a wide projection next to the kept logits, as in real models
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=512,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    loaded = prepare("wide-llama-bf16", model, t.tiny_tokenizer(), torch.device("cpu"))
    prompt = build_prompt(loaded, "cqa", CQA)
    ids = encode_prompt(loaded, prompt, 1).ids
    scorer = Scorer(loaded, collate([ids], [[5]], 0, True), rows="tokens")
    copy = vocab * hidden * 2
    assert scorer.row_bytes(1) >= copy
    assert scorer.rows_per_chunk(1, 8 * copy) <= 4
