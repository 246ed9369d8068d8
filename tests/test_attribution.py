"""Attribution methods against direct autograd / explicit forward computations."""

import pytest
import torch

from explain.attr import get_method
from explain.lm_scoring import Scorer, collate
from explain.pipeline import build_prompt, encode_answer, encode_prompt, explain, explain_batch

CQA = {
    "question": "Where would you put a plate after washing it?",
    "choices": "cupboard|table|sink|restaurant|kitchen",
}
ANSWER = "cupboard table"


def _answer_logprobs(loaded, pe, answer_ids):
    """Direct teacher-forced log p(answer token t) for prompt embeddings ``pe`` [1, Lp, D]."""
    model, emb = loaded.model, loaded.model.get_input_embeddings()
    a = torch.tensor([answer_ids])
    if loaded.is_encoder_decoder:
        logits = model(inputs_embeds=pe, decoder_input_ids=model._shift_right(a)).logits[0]
    else:
        full = torch.cat([pe, emb(a).detach()], dim=1)
        logits = model(inputs_embeds=full).logits[0, pe.shape[1] - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, a[0][:, None])[:, 0]


def _direct_rows(loaded, prompt_ids, answer_ids):
    """Per answer token: gradient of its log-prob w.r.t. prompt embeddings, one backward each."""
    emb = loaded.model.get_input_embeddings()
    pe = emb(torch.tensor([prompt_ids])).detach().requires_grad_(True)
    logp = _answer_logprobs(loaded, pe, answer_ids)
    rows = [
        torch.autograd.grad(logp[t], pe, retain_graph=True)[0][0] for t in range(len(answer_ids))
    ]
    return torch.stack(rows), pe.detach()[0], logp.detach()


def _ids(loaded, fields=CQA, template="cqa", answer=ANSWER):
    prompt = build_prompt(loaded, template, fields)
    ans = encode_answer(loaded, prompt, answer)
    return encode_prompt(loaded, prompt, len(ans)).ids, ans


def _close(a, b, rtol=1e-4):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = b.abs().max().clamp(min=1e-12)
    assert ((a - b).abs().max() / scale) < rtol, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_gradient_methods_equal_direct_autograd(tiny, method):
    result = explain(tiny, CQA, template="cqa", method=method, answer=ANSWER, rows="tokens")
    prompt_ids, ans = _ids(tiny)
    grads, embeds, _ = _direct_rows(tiny, prompt_ids, ans)
    expected = grads.norm(dim=-1) if method == "saliency" else (grads * embeds).sum(-1)
    assert len(result.matrix) == len(ans) > 1
    for t in range(len(ans)):
        _close(result.matrix[t], expected[t])
    _close(result.token_scores, expected.mean(0))


def test_integrated_gradients_completeness(tiny):
    result = explain(
        tiny,
        CQA,
        template="cqa",
        method="integrated_gradients",
        answer=ANSWER,
        rows="tokens",
        method_settings={"n_steps": 64},
    )
    assert result.extras["completeness_gap"] < 0.05
    # the gap is measured, not assumed: recompute f(x) - f(baseline) independently
    prompt_ids, ans = _ids(tiny)
    _, embeds, full = _direct_rows(tiny, prompt_ids, ans)
    batch = collate([prompt_ids], [ans], tiny.tokenizer.pad_token_id, True)
    scorer = Scorer(tiny, batch)
    with torch.no_grad():
        base = scorer(scorer.baseline("pad"))[0]
    sums = torch.tensor(result.matrix).sum(-1)
    rel = (sums - (full - base)).abs().sum() / (full - base).abs().sum()
    assert abs(float(rel) - result.extras["completeness_gap"]) < 1e-3


def test_integrated_gradients_few_steps_has_larger_gap(tiny):
    few = explain(
        tiny,
        CQA,
        template="cqa",
        method="integrated_gradients",
        answer=ANSWER,
        method_settings={"n_steps": 2, "method": "riemann_left"},
    )
    many = explain(
        tiny,
        CQA,
        template="cqa",
        method="integrated_gradients",
        answer=ANSWER,
        method_settings={"n_steps": 64},
    )
    assert many.extras["completeness_gap"] < few.extras["completeness_gap"]


def test_occlusion_equals_masked_forward_passes(tiny):
    result = explain(tiny, CQA, template="cqa", method="occlusion", answer=ANSWER, rows="tokens")
    prompt_ids, ans = _ids(tiny)
    emb = tiny.model.get_input_embeddings()
    pad = emb(torch.tensor([tiny.tokenizer.pad_token_id]))[0]

    with torch.no_grad():
        pe = emb(torch.tensor([prompt_ids]))
        full = _answer_logprobs(tiny, pe, ans)
        for pos in range(0, len(prompt_ids), 7):
            masked = pe.clone()
            masked[0, pos] = pad
            drop = full - _answer_logprobs(tiny, masked, ans)
            _close([row[pos] for row in result.matrix], drop, rtol=1e-4)


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_batched_equals_one_at_a_time(tiny, method):
    items = [CQA, {"question": "What do you do with 12.5 apples?", "choices": "eat|sell|café"}]
    answers = ["cupboard", "sell them all"]
    batched = explain_batch(tiny, items, template="cqa", method=method, answers=answers)
    for item, ans, res in zip(items, answers, batched):
        single = explain(tiny, item, template="cqa", method=method, answer=ans)
        assert single.input_tokens == res.input_tokens
        _close(res.matrix, single.matrix, rtol=1e-4)


def test_generated_answer_is_the_default_target(tiny):
    result = explain(tiny, CQA, template="cqa", method="saliency", max_new_tokens=3)
    assert result.target == "generated"
    assert 1 <= len(result.output_tokens) <= 3
    assert len(result.matrix) == len(result.output_tokens)
    assert len(result.matrix[0]) == len(result.input_tokens)


def test_parameters_stay_frozen(tiny):
    explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER)
    assert all(not p.requires_grad and p.grad is None for p in tiny.model.parameters())


def test_unknown_method_is_a_clear_error(tiny):
    from explain.errors import InputError

    with pytest.raises(InputError, match="unknown method 'nope'; methods: saliency"):
        get_method("nope")


def test_answer_row_is_the_whole_answer_log_prob(tiny):
    per_token = explain(
        tiny, CQA, template="cqa", method="input_x_gradient", answer=ANSWER, rows="tokens"
    )
    whole = explain(
        tiny, CQA, template="cqa", method="input_x_gradient", answer=ANSWER, rows="answer"
    )
    assert len(whole.matrix) == 1 and whole.output_tokens == [ANSWER]
    # linear in the gradient: the answer row is the sum of the token rows
    _close(whole.matrix[0], torch.tensor(per_token.matrix).sum(0))
    sal = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER, rows="answer")
    prompt_ids, ans = _ids(tiny)
    grads, _, _ = _direct_rows(tiny, prompt_ids, ans)
    _close(sal.matrix[0], grads.sum(0).norm(dim=-1))  # norm of the summed gradient


# --- the batched Jacobian: fallback only for missing batching rules, chunks by memory budget ---


class _ItemInBackward(torch.autograd.Function):
    """x * 2 whose backward calls ``.item()``: a real kernel without a vmap batching rule."""

    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2 * (float(g.sum().item()) ** 0)


class _FailsOnce(torch.autograd.Function):
    """Identity whose first backward raises ``error`` (later ones succeed, as a retry might)."""

    calls = 0
    error: Exception = RuntimeError("x")

    @staticmethod
    def forward(ctx, a):
        return a.clone()

    @staticmethod
    def backward(ctx, g):
        _FailsOnce.calls += 1
        if _FailsOnce.calls == 1:
            raise _FailsOnce.error
        return g


def _per_row(fn, x):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    return torch.stack(
        [torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0] for i in range(out.shape[1])]
    )


@pytest.mark.parametrize("chunk", [None, 2])
def test_op_without_batching_rule_falls_back_to_rows(chunk):
    from explain.attr.gradient import jacobian_rows

    torch.manual_seed(0)
    w = torch.randn(5, 7)
    fn = lambda a: torch.tanh(_ItemInBackward.apply(a)) @ w  # noqa: E731
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="Batching rule not implemented"):  # torch's own error
        xx = x.clone().requires_grad_(True)
        out = fn(xx)
        eye = torch.eye(7)[:, None, :].expand(7, 3, 7)
        torch.autograd.grad(out, xx, eye, is_grads_batched=True)
    got = jacobian_rows(fn, x, chunk=chunk)  # no "backward through the graph a second time"
    assert torch.allclose(got, _per_row(fn, x), atol=1e-6)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
        RuntimeError("expected scalar type Float but found BFloat16"),
    ],
    ids=["cuda-oom", "cpu-oom", "generic"],
)
def test_other_backward_errors_propagate_unchanged(error):
    from explain.attr.gradient import jacobian_rows

    _FailsOnce.calls, _FailsOnce.error = 0, error
    w = torch.randn(4, 3)
    with pytest.raises(type(error)) as caught:
        jacobian_rows(lambda a: _FailsOnce.apply(a) @ w, torch.randn(2, 4))
    assert caught.value is error and _FailsOnce.calls == 1  # no silent per-row retry


def test_chunked_rows_equal_unchunked(tiny, monkeypatch):
    from explain.attr.gradient import jacobian_rows

    prompt_ids, ans = _ids(tiny)
    batch = collate([prompt_ids, prompt_ids[3:]], [ans, ans[:2]], tiny.tokenizer.pad_token_id, True)
    scorer = Scorer(tiny, batch)
    t = scorer.n_outputs
    assert t >= 3
    full = jacobian_rows(scorer, scorer.prompt_embeds, chunk=t)
    for chunk in (1, 2):
        _close(jacobian_rows(scorer, scorer.prompt_embeds, chunk=chunk), full, rtol=1e-6)
    # the budget picks the chunk: a 1 MB budget forces one row at a time, same matrix
    whole = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER)
    monkeypatch.setenv("KDLENS_ATTR_MEMORY_MB", "0.001")
    assert scorer.rows_per_chunk(2) == 1
    one = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER)
    _close(one.matrix, whole.matrix, rtol=1e-6)


def test_row_budget_shrinks_with_prompt_and_copies(tiny):
    prompt_ids, ans = _ids(tiny)
    pad = tiny.tokenizer.pad_token_id
    short = Scorer(tiny, collate([prompt_ids[-8:]], [ans], pad, True))
    long = Scorer(tiny, collate([prompt_ids], [ans], pad, True))
    assert long.row_bytes(1) > short.row_bytes(1)
    assert long.row_bytes(4) == 4 * long.row_bytes(1)
    budget = 50 * long.row_bytes(1)
    assert long.rows_per_chunk(1, budget) == 50 and long.rows_per_chunk(8, budget) == 6
    assert long.rows_per_chunk(1, 1) == 1  # never zero rows


def test_given_answer_over_the_limit_is_a_clear_error(tiny):
    from explain.errors import InputError
    from explain.pipeline import MAX_ANSWER_TOKENS

    with pytest.raises(InputError, match=f"limit is {MAX_ANSWER_TOKENS} tokens"):
        explain(tiny, CQA, template="cqa", answer="cupboard " * (MAX_ANSWER_TOKENS + 1))


# --- one rationale definition: what the app shows is what extraction records ---


def test_explain_and_extraction_batch_give_the_same_rationale(tiny):
    from explain.rationale import RATIONALE_DEFAULTS, RationaleSettings

    items = [CQA, {"question": "What do you do with 12.5 apples?", "choices": "eat|sell|café"}]
    answers = ["cupboard table", "sell them all"]
    # extraction: a padded batch with the shared settings spelled out
    batch = explain_batch(
        tiny, items, template="cqa", answers=answers, **RATIONALE_DEFAULTS.as_kwargs()
    )
    for item, ans, rec in zip(items, answers, batch):
        shown = explain(tiny, item, template="cqa", answer=ans)  # the app / CLI defaults
        assert [w.text for w in shown.rationale] == [w.text for w in rec.rationale]
        _close([w.score for w in shown.words], [w.score for w in rec.words], rtol=1e-4)
        d = RATIONALE_DEFAULTS
        assert rec.method == shown.method == d.method
        for key in ("top_k", "rows", "aggregate", "piece_aggregation"):
            assert rec.settings[key] == shown.settings[key] == getattr(d, key)
    assert RationaleSettings().as_kwargs()["how"] == RATIONALE_DEFAULTS.aggregate


def test_token_matrix_is_for_display_only(tiny):
    """The app draws per-token rows but its rationale is the whole answer's, as extraction's."""
    plain = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER)
    shown = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER,
                    token_matrix=True)  # fmt: skip
    per_token = explain(tiny, CQA, template="cqa", method="saliency", answer=ANSWER,
                        rows="tokens")  # fmt: skip
    assert len(plain.matrix) == 1 and len(shown.matrix) == len(shown.output_ids) > 1
    _close(shown.matrix, per_token.matrix)
    _close(shown.token_scores, plain.token_scores)
    assert [w.text for w in shown.rationale] == [w.text for w in plain.rationale]


def test_vocabulary_projection_gets_a_contiguous_input():
    """``logits_to_keep`` slices a strided view of the hidden states; the loaded model's head
    is fed a contiguous copy (the strided one made CPU linear copy the [V, D] weight per row),
    with logits equal to those of the full projection."""
    import tiny as tiny_models

    tiny = tiny_models.loaded("llama")
    seen = []
    head = tiny.model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    try:
        ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
        with torch.no_grad():
            kept = tiny.model(input_ids=ids, logits_to_keep=2).logits
            full = tiny.model(input_ids=ids).logits[:, -2:]
    finally:
        hook.remove()
    assert seen == [True, True]
    torch.testing.assert_close(kept, full)
