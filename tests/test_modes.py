"""The training-mode registry: pairs, weights, the random-words control, inference prompts."""

from __future__ import annotations

import pytest

from distill.data import Example
from distill.modes import MODES, ModeError, TrainingMode, get_mode, input_words, register

EX = Example(
    id="q1",
    task="cqa",
    fields={"question": "Where would you put a plate after washing it?",
            "choices": ["cupboard", "table", "sink"]},
    label="cupboard",
    options=["cupboard", "table", "sink"],
    llm_rationale="Plates are  kept in a cupboard.",
)  # fmt: skip


def test_registry_holds_the_five_modes():
    assert list(MODES) == ["standard", "saliency", "dss", "random", "hint"]
    with pytest.raises(ModeError, match="unknown mode 'magic'"):
        get_mode("magic")
    assert get_mode("saliency").needs == "teacher" and get_mode("dss").needs == "llm"
    assert get_mode("random").needs is None and get_mode("standard").needs is None


@pytest.mark.parametrize(
    "mode,words,expect",
    [
        ("standard", ["plate"], [("predict", None, None, "cupboard", 1.0)]),
        ("saliency", ["plate", "washing"],
         [("predict", None, None, "cupboard", 0.2), ("explain", None, None,
                                                    "plate washing", 0.8)]),
        ("saliency", None, [("predict", None, None, "cupboard", 1.0)]),  # full weight
        ("dss", None, [("predict", None, None, "cupboard", 0.2),
                       ("explain", None, None, "Plates are kept in a cupboard.", 0.8)]),
        ("hint", ["plate"], [("predict", None, ["plate"], "cupboard", 1.0)]),
    ],
)  # fmt: skip
def test_pairs_and_weights(mode, words, expect):
    got = [(p.kind, p.prefix, p.hint, p.target, p.weight)
           for p in get_mode(mode).pairs(EX, words, alpha=0.2)]  # fmt: skip
    assert [g[:4] for g in got] == [e[:4] for e in expect]  # the cue, not a prefix, says which
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expect])


def test_random_control_draws_input_words_seeded_with_the_rationale_length():
    pool = input_words(EX)
    assert "Question" not in pool and "plate" in pool and "cupboard" in pool  # choices are input
    mode = get_mode("random")
    a = mode.explain_target(EX, ["x", "y", "z"], seed=0)
    assert len(a.split()) == 3 and all(w in pool for w in a.split())
    assert a == mode.explain_target(EX, ["p", "q", "r"], seed=0)  # seeded: same draw
    draws = {mode.explain_target(EX, ["x", "y", "z"], seed=s) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert len(mode.explain_target(EX, None, seed=0).split()) == 5  # default k
    order = [pool.index(w) for w in a.split()]
    assert order == sorted(order)  # input order, like a rationale
    (pred, expl) = mode.pairs(EX, ["x", "y"], alpha=0.5, seed=1)
    assert pred.prefix is None and expl.prefix is None and pred.kind == "predict"


def test_inference_prompt_per_mode():
    assert get_mode("standard").inference(["w"]) == (None, None)
    assert get_mode("saliency").inference(["w"]) == (None, None)  # the standard prompt
    assert get_mode("hint").inference(["w"]) == (None, ["w"])
    assert get_mode("hint").inference(None) == (None, None)
    # distilling-step-by-step's markers before the input, when a run asks for them
    assert get_mode("saliency").inference(["w"], marker="prefix") == ("predict", None)
    assert get_mode("standard").inference(None, marker="prefix") == (None, None)
    pred, expl = get_mode("dss").pairs(EX, None, marker="prefix")
    assert (pred.prefix, expl.prefix) == ("predict", "explain")


def test_a_new_mode_is_one_registered_class():
    @register
    class Upper(TrainingMode):
        name = "upper-test"
        description = "explain target: the label in capitals"
        multitask = True

        def explain_target(self, example, words, seed):
            return example.label.upper()

    try:
        kinds = [(p.kind, p.target) for p in get_mode("upper-test").pairs(EX)]
        assert kinds == [("predict", "cupboard"), ("explain", "CUPBOARD")]
    finally:
        MODES.pop("upper-test")
