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

from explain import lm_scoring
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


# --- layer checkpointing (issue 9: the attribution forward kept every layer's activations) ---


_saved_bytes = lm_scoring.saved_tensor_bytes


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_scoring_forward_keeps_layer_inputs_only(family, monkeypatch):
    """The default attribution forward keeps under half of what a plain forward keeps: the
    layers' activations are recomputed during the backward (before: 1.1 MB per token for
    SmolLM2, 2.4 MB for the Qwen pack, 10 GB at 4,096 tokens)."""
    import tiny as t

    loaded = t.loaded(family)
    ids = loaded.tokenizer(" ".join(t.CORPUS * 2), add_special_tokens=False)["input_ids"][:200]
    monkeypatch.setattr(lm_scoring, "CHECKPOINT_MIN_TOKENS", 100)  # auto: 204 tokens > 100
    scorer = Scorer(loaded, collate([ids], [ids[:4]], 0, not loaded.is_encoder_decoder))
    x = scorer.prompt_embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        default = _saved_bytes(lambda: scorer(x))
        monkeypatch.setattr(lm_scoring, "CHECKPOINT_MIN_TOKENS", 1000)  # auto: short, kept
        short = _saved_bytes(lambda: Scorer(loaded, scorer.batch)(x))
        monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "0")
        plain = _saved_bytes(lambda: Scorer(loaded, scorer.batch)(x))
    assert default < plain / 2, (default, plain)  # tiny T5: its [heads, L, L] position bias stays
    assert short == plain  # a short batch is not recomputed (extraction's speed)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_checkpointed_attribution_is_unchanged(tiny, method, monkeypatch):
    """Identical to the forward that keeps every activation, with one or many row chunks."""
    for budget in ("0.001", "1e12"):
        monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", budget)
        monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "0")
        plain = get_method(method).attribute(_scorer(tiny)).matrix
        monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "1")
        got = get_method(method).attribute(_scorer(tiny)).matrix
        assert torch.equal(got, plain)


def test_checkpointed_saliency_equals_direct_autograd(tiny, monkeypatch):
    """Each row against its own plain backward (no Captum, no vmap, no checkpointing)."""
    monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "1")  # tiny inputs: auto would not checkpoint
    scorer = _scorer(tiny)
    x = scorer.prompt_embeds.detach().requires_grad_(True)
    got = get_method("saliency").attribute(scorer).matrix  # [B, T, Lp]
    monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "0")
    plain = Scorer(tiny, scorer.batch, rows="tokens")
    with torch.enable_grad():
        out = plain(x)
        for i in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)
            assert torch.allclose(got[:, i], g.norm(dim=-1), rtol=1e-5, atol=1e-7)


def test_checkpointing_leaves_the_model_as_it_was(tiny, monkeypatch):
    """Wrappers exist only while an attribution runs; the model stays in eval mode."""
    from explain.lm_scoring import checkpoint_layers

    monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "1")
    layers = checkpoint_layers(tiny.model)
    assert layers  # Llama decoder layers / T5 blocks
    get_method("saliency").attribute(_scorer(tiny))
    assert not tiny.model.training
    assert all("forward" not in vars(m) for m in layers)


def test_concurrent_checkpointed_attributions_agree(tiny, monkeypatch):
    """Two threads on one shared model (the app's two compute slots) get the single-thread
    results, and the wrappers are gone afterwards."""
    import threading

    monkeypatch.setenv("KDLENS_ATTR_CHECKPOINT", "1")
    expected = get_method("input_x_gradient").attribute(_scorer(tiny)).matrix
    got: list = [None, None]

    def run(i: int) -> None:
        got[i] = get_method("input_x_gradient").attribute(_scorer(tiny)).matrix

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(torch.equal(g, expected) for g in got)
    from explain.lm_scoring import checkpoint_layers

    assert all("forward" not in vars(m) for m in checkpoint_layers(tiny.model))


# --- the heatmap's rows (issue 9: a 512-token given answer meant 512 backward passes) ---


def test_long_answer_heatmap_shows_its_first_rows(tiny, monkeypatch):
    """Past MAX_HEATMAP_ROWS the heatmap holds the first rows, equal to the uncapped matrix's,
    with a visible warning; the word scores and the rationale are the whole answer's."""
    from explain import limits

    kw = {"template": "cqa", "answer": ANSWER, "token_matrix": True}
    whole = explain(tiny, CQA, **kw)
    n = len(whole.output_ids)
    assert n > 3 and len(whole.matrix) == n and not whole.warnings
    monkeypatch.setattr(limits, "MAX_HEATMAP_ROWS", 3)
    capped = explain(tiny, CQA, **kw)
    assert len(capped.matrix) == len(capped.output_tokens) == 3
    assert capped.output_ids == whole.output_ids and capped.answer == whole.answer
    assert torch.allclose(torch.tensor(capped.matrix), torch.tensor(whole.matrix[:3]),
                          rtol=1e-5, atol=1e-7)  # fmt: skip
    assert capped.token_scores == whole.token_scores
    assert [w.text for w in capped.rationale] == [w.text for w in whole.rationale]
    assert any(f"first 3 of the answer's {n} tokens" in w for w in capped.warnings)


def test_heatmap_rows_shrink_with_the_input_within_the_cell_budget(tiny, monkeypatch):
    """A long input gets fewer heatmap rows (each row is a backward pass over all of it)."""
    from explain import limits

    assert limits.heatmap_rows(100) == limits.MAX_HEATMAP_ROWS == 64
    assert limits.heatmap_rows(256) == 64 and limits.heatmap_rows(1024) == 16
    assert limits.heatmap_rows(4_600) == 3 and limits.heatmap_rows(10**6) == 1
    assert limits.heatmap_rows(1024, batch=4) == 4 and limits.heatmap_rows(0) == 64
    kw = {"template": "cqa", "answer": ANSWER, "token_matrix": True}
    whole = explain(tiny, CQA, **kw)
    width = len(whole.input_tokens)
    monkeypatch.setattr(limits, "HEATMAP_TOKEN_BUDGET", 2 * width)  # room for two rows
    capped = explain(tiny, CQA, **kw)
    assert len(capped.matrix) == 2
    assert torch.allclose(torch.tensor(capped.matrix), torch.tensor(whole.matrix[:2]),
                          rtol=1e-5, atol=1e-7)  # fmt: skip
    assert any("first 2 of the answer's" in w for w in capped.warnings)


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_costly_methods_refuse_long_prompts_before_any_model_run(tiny, method, monkeypatch):
    """Occlusion runs a forward per input token, integrated gradients n_steps backward passes
    per row: each has its own prompt limit, checked before generation."""
    from explain import pipeline
    from explain.attr import METHODS
    from explain.errors import InputError

    settings = {"n_steps": 2} if method == "integrated_gradients" else None
    explain(tiny, CQA, template="cqa", answer=ANSWER, method=method, method_settings=settings)
    monkeypatch.setattr(METHODS[method], "max_input_tokens", 5)

    def no_model_run(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(pipeline, "generate", no_model_run)
    with pytest.raises(InputError, match=f"{method} takes prompts of at most 5 tokens"):
        explain(tiny, CQA, template="cqa", method=method)
    assert METHODS["saliency"].max_input_tokens is None  # one backward pass: limits.py only


def test_integrated_gradients_steps_are_bounded():
    from explain.errors import InputError

    for bad in (0, -3, 257, 10**6, 2.5, True):
        with pytest.raises(InputError, match="n_steps must be a whole number from 1 to 256"):
            get_method("integrated_gradients", n_steps=bad)
    assert get_method("integrated_gradients", n_steps=256).settings["n_steps"] == 256
