"""Evaluation: generation accuracy with known outputs, choice scoring, predict_one, compare."""

from __future__ import annotations

import json
import math

import pytest
import tiny
import torch
from test_train import ITEMS, config, example, tiny_loader, write_cqa

from distill import compare as cmp
from distill import evaluate as ev
from distill import train as tr
from distill.data import Example, load_task
from distill.metrics import accuracy_ci
from distill.runs import RunDir
from explain.formatting import encode_target

pytestmark = pytest.mark.usefixtures("one_thread")


def examples(n: int = 5) -> list[Example]:
    return [example(i) for i in range(n)]


def patch_generation(monkeypatch, loaded, answers: dict[str, str], mode="standard"):
    """Make greedy generation answer ``answers[example id]`` (keyed by the encoded prompt)."""
    by_prompt = {}
    for i in range(len(ITEMS)):
        ex = example(i)
        if ex.id in answers:
            ids = loaded.tokenizer(answers[ex.id], add_special_tokens=False)["input_ids"]
            by_prompt[tuple(ev.prompt_ids(loaded, ex, mode, None, 10_000))] = ids
    calls = []

    def fake_generate(lm, prompts, max_new_tokens):
        calls.append(len(prompts))
        return [list(by_prompt[tuple(p)]) for p in prompts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    return calls


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_accuracy_and_ci_with_known_outputs(monkeypatch, family):
    lm = tiny.loaded(family)
    exs = examples(5)
    # 3 right (one as a letter, one with extra case/punctuation), 2 wrong.
    answers = {"q0": "cupboard", "q1": "(a)", "q2": "Apples.", "q3": "sink", "q4": "table"}
    calls = patch_generation(monkeypatch, lm, answers)
    r = ev.evaluate(lm, "cqa", exs, batch_size=2, choices=False)
    assert calls == [2, 2, 1]  # batched
    assert r.n == 5 and r.accuracy == pytest.approx(0.6)
    assert (r.accuracy, r.ci_low, r.ci_high) == accuracy_ci([True, True, True, False, False])
    assert [p["correct"] for p in r.predictions] == [True, True, True, False, False]
    assert [p["id"] for p in r.predictions] == ["q0", "q1", "q2", "q3", "q4"]
    assert r.predictions[3] == {
        "id": "q3",
        "prediction": "sink",
        "gold": "kitchen",
        "correct": False,
        "choice_prediction": None,
        "choice_correct": None,
        "choice_prediction_sum": None,
        "choice_correct_sum": None,
    }
    assert r.choice_accuracy is None and r.choice_accuracy_sum is None
    assert r.settings["mode"] == "standard"
    r = ev.evaluate(lm, "cqa", exs, limit=2, choices=False)
    assert r.n == 2 and r.accuracy == 1.0


def _direct_logprob(lm, src: list[int], tgt: list[int]) -> float:
    """Summed log-likelihood of ``tgt`` after ``src``, computed unbatched and unpadded."""
    model = lm.model.eval()
    with torch.no_grad():
        if lm.is_encoder_decoder:
            logits = model(input_ids=torch.tensor([src]), labels=torch.tensor([tgt])).logits[0]
        else:
            logits = model(input_ids=torch.tensor([src + tgt])).logits[0, len(src) - 1 : -1]
    logp = torch.log_softmax(logits.float(), -1)
    return logp.gather(-1, torch.tensor(tgt)[:, None]).sum().item()


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_choice_scoring_picks_summed_and_normalised(family):
    lm = tiny.loaded(family, seed=3)
    exs = examples(4)
    r = ev.evaluate(lm, "cqa", exs, batch_size=3, max_new_tokens=2)
    for ex, pred in zip(exs, r.predictions):
        src = ev.prompt_ids(lm, ex, "standard", None, 10_000)
        sums = {o: _direct_logprob(lm, src, encode_target(lm, o, eos=False)) for o in ex.options}
        norms = {o: v / len(o) for o, v in sums.items()}  # lm-eval acc_norm: per character
        assert pred["choice_prediction_sum"] == max(sums, key=sums.get)
        assert pred["choice_prediction"] == max(norms, key=norms.get)
        assert pred["choice_correct"] == (pred["choice_prediction"] == ex.label)
        assert pred["choice_correct_sum"] == (pred["choice_prediction_sum"] == ex.label)
        for o in ex.options:
            assert pred["option_logprobs"][o] == pytest.approx(sums[o], abs=1e-4)
    norm_ok = [p["choice_correct"] for p in r.predictions]
    sum_ok = [p["choice_correct_sum"] for p in r.predictions]
    assert r.choice_accuracy == pytest.approx(sum(norm_ok) / len(norm_ok))
    assert r.choice_accuracy_sum == pytest.approx(sum(sum_ok) / len(sum_ok))


def test_normalised_ranking_differs_from_summed():
    # A long option with a lower total but a higher per-character log-likelihood.
    rk = ev.rank_options(["no", "a much longer option"], [[-2.0], [-1.0, -1.0, -1.0]])
    assert rk.best_sum == 0 and rk.best_norm == 1
    assert rk.norms == [pytest.approx(-1.0), pytest.approx(-3.0 / 20)]


@pytest.mark.parametrize("family", ["llama", "t5", "qwen2"])
def test_option_fast_path_equals_full_prompts(family):
    """One prompt pass + options from its cache/encoder states == each option after its full
    prompt: same log-probs (1e-3), same picks; questions of different lengths and option
    counts batched together (left padding for decoder-only)."""
    lm = tiny.loaded(family, seed=5)
    exs = examples(5)
    srcs = [ev.prompt_ids(lm, e, "standard", None, 10_000)
            for e in exs]  # fmt: skip
    srcs[1] = srcs[1][3:]  # uneven prompt lengths inside one batch
    opts = [[encode_target(lm, o, eos=False) for o in e.options] for e in exs]
    opts[2] = opts[2][:3] + [encode_target(lm, "cupboard table sink", eos=False)]
    opts[4] = []  # a question without options scores nothing
    fast = ev.option_logprobs(lm, srcs, opts, batch_size=3)
    pairs = [(i, k) for i in range(len(exs)) for k in range(len(opts[i]))]
    full = ev.target_logprobs(lm, [srcs[i] for i, _ in pairs], [opts[i][k] for i, k in pairs])
    assert [len(f) for f in fast] == [len(o) for o in opts]
    for (i, k), lp in zip(pairs, full):
        assert len(fast[i][k]) == len(opts[i][k])
        assert fast[i][k] == pytest.approx(lp, abs=1e-3)
    for i in range(4):
        by_fast = [sum(x) for x in fast[i]]
        by_full = [sum(lp) for (j, _k), lp in zip(pairs, full) if j == i]
        assert by_fast.index(max(by_fast)) == by_full.index(max(by_full))


def test_option_scoring_runs_each_prompt_once(monkeypatch):
    lm = tiny.loaded("llama", seed=5)
    exs = examples(4)
    srcs = [ev.prompt_ids(lm, e, "standard", None, 10_000)
            for e in exs]  # fmt: skip
    opts = [[encode_target(lm, o, eos=False) for o in e.options] for e in exs]
    seen = []
    real = lm.model.forward

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids")
        seen.append(tuple(ids.shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", spy)
    ev.option_logprobs(lm, srcs, opts, batch_size=4)
    longest = max(map(len, srcs))
    longest_opt = max(len(o) for os_ in opts for o in os_)
    assert seen == [(4, longest), (20, longest_opt)]  # prompts once, then 20 options


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_batched_logprobs_match_unbatched(family):
    lm = tiny.loaded(family, seed=1)
    srcs = [
        list(lm.tokenizer(s)["input_ids"]) for s in ["predict: where is the sink?", "a", "Sam had"]
    ]
    tgts = [encode_target(lm, t, eos=False) for t in ["kitchen", "cupboard table", "12"]]
    batched = ev.target_logprobs(lm, srcs, tgts, batch_size=3)
    for s, t, lp in zip(srcs, tgts, batched):
        assert len(lp) == len(t)
        assert sum(lp) == pytest.approx(_direct_logprob(lm, s, t), abs=1e-4)


def test_batched_generation_matches_one_by_one():
    lm = tiny.loaded("llama", seed=2)
    exs = examples(5)
    a = ev.evaluate(lm, "cqa", exs, batch_size=5, max_new_tokens=5, choices=False)
    b = ev.evaluate(lm, "cqa", exs, batch_size=1, max_new_tokens=5, choices=False)
    assert [p["prediction"] for p in a.predictions] == [p["prediction"] for p in b.predictions]


def test_predict_one_probabilities():
    lm = tiny.loaded("llama", seed=4)
    ex = example(0)
    p = ev.predict_one(lm, "cqa", ex.fields, gold=ex.label, max_new_tokens=3)
    assert sum(p.choice_probs.values()) == pytest.approx(1.0)
    assert p.choice in ex.options and 0.0 <= p.probability <= 1.0
    assert isinstance(p.correct, bool)
    assert ev.predict_one(lm, "cqa", ex.fields).correct is None

    fields = {"body": "Sam had 12 apples and gave 3 to Ann.", "question": "How many are left?"}
    p = ev.predict_one(lm, "svamp", fields, gold="( 12.0 - 3.0 )", max_new_tokens=3)
    assert p.choice_probs is None and isinstance(p.correct, bool)
    src = ev.prompt_ids(lm, Example("x", "svamp", fields, ""), "standard", None, 10_000)
    ids = ev.generate_answers(lm, [src], 3)[0]
    if ids:
        mean = _direct_logprob(lm, src, ids) / len(ids)
        assert p.probability == pytest.approx(math.exp(mean), rel=1e-4)


def test_predict_one_hint_uses_words(monkeypatch):
    lm = tiny.loaded("llama")
    seen = []
    real = ev.example_source

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.prompt.text)
        return out

    monkeypatch.setattr(ev, "example_source", spy)
    ev.predict_one(
        lm,
        "cqa",
        example(0).fields,
        mode="hint",
        rationale_words=["plate", "wash"],
        max_new_tokens=1,
    )
    assert "Hint: plate wash" in seen[-1]


def test_evaluate_a_run_folder_uses_its_mode(tmp_path):
    tr.train(config(tmp_path, "saliency", steps=2), model_loader=tiny_loader())
    exs = load_task("cqa", tmp_path / "data" / "cqa.json", limit=3)
    r = ev.evaluate(tmp_path / "run", "cqa", exs, max_new_tokens=2, choices=False)
    assert r.settings["mode"] == "saliency" and r.n == 3


@pytest.mark.parametrize("marker", ["cue", "prefix", None])
def test_a_run_answers_in_the_format_it_was_trained_in(tmp_path, monkeypatch, marker):
    """The task marker a run trains with is the one its dev evaluation and any later
    evaluation use: a "prefix" run, and one recorded before the setting existed (None: the
    field deleted from its record), answer "predict: ..."; a "cue" run the standard prompt."""
    seen = []
    real = ev.generate_answers

    def spy(loaded, sources, *args, **kwargs):
        seen.extend(loaded.tokenizer.decode(s) for s in sources)
        return real(loaded, sources, *args, **kwargs)

    monkeypatch.setattr(ev, "generate_answers", spy)
    want = "Question:" if marker == "cue" else "predict: Question:"
    cfg = config(tmp_path, "saliency", steps=2, task_marker=marker or "prefix")
    tr.train(cfg, model_loader=tiny_loader())
    assert seen and all(t.startswith(want) and t.endswith("\nAnswer:") for t in seen)  # dev
    if marker is None:
        path = tmp_path / "run" / "config.json"
        record = json.loads(path.read_text())
        del record["settings"]["task_marker"]
        path.write_text(json.dumps(record))
    seen.clear()
    exs = load_task("cqa", tmp_path / "data" / "cqa.json", limit=2)
    ev.evaluate(tmp_path / "run", "cqa", exs, max_new_tokens=2, choices=False)
    assert len(seen) == 2 and all(t.startswith(want) for t in seen)


def _finished_run(root, name, mode, acc):
    run = RunDir(root / name)
    run.create(
        {
            "kind": "train",
            "settings": {
                "mode": mode,
                "student": "s",
                "task": "cqa",
                "alpha": 0.5,
                "lr": 5e-5,
                "seed": 0,
            },
            "rationales": {"settings": {"method": "saliency", "top_k": 5}},
        }
    )
    run.finish(
        {
            "mode": mode,
            "student": "s",
            "task": "cqa",
            "steps": 10,
            "accuracy": acc,
            "ci_low": acc - 0.1,
            "ci_high": acc + 0.1,
            "choice_accuracy": 0.5,
            "n": 20,
        }
    )
    return run.path


def test_compare_and_write(tmp_path):
    a = _finished_run(tmp_path, "std", "standard", 0.4)
    b = _finished_run(tmp_path, "sal", "saliency", 0.6)
    df = cmp.compare([a, b])
    assert list(df.columns) == cmp.COMPARE_COLUMNS
    assert list(df["mode"]) == ["standard", "saliency"] and list(df["accuracy"]) == [0.4, 0.6]
    assert df.loc[1, "ci"] == "0.500-0.700"
    assert json.loads(df.loc[1, "settings"])["extraction"]["top_k"] == 5
    csv, md = cmp.write_comparison(df, tmp_path / "out")
    assert csv.read_text().splitlines()[0].startswith("run,mode,student")
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| run | mode |") and len(lines) == 4
    assert "| sal | saliency | s | cqa | 10 | 0.6000 |" in lines[3]

    unfinished = RunDir(tmp_path / "half")
    unfinished.create({"kind": "train"})
    with pytest.raises(tr.TrainError, match="not finished"):
        cmp.compare([unfinished.path])


def test_data_written_by_helper_is_loadable(tmp_path):
    exs = load_task("cqa", write_cqa(tmp_path))
    assert [e.label for e in exs] == [a for _q, _c, a in ITEMS]


def _write_preds(path, correct: dict[str, bool]) -> None:
    lines = [
        json.dumps({"id": i, "prediction": "x", "gold": "y", "correct": ok, "choice_correct": ok})
        for i, ok in correct.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def test_compare_pairs_from_runs_and_prediction_files(tmp_path, capsys):
    from distill.cli import main

    a = _finished_run(tmp_path, "std", "standard", 0.4)
    b = _finished_run(tmp_path, "sal", "saliency", 0.6)
    ids = [f"q{i}" for i in range(10)]
    # std right on q0-q3; sal right on q0-q7: 4 discordant pairs, all for sal
    _write_preds(a / cmp.RUN_PREDICTIONS, {i: n < 4 for n, i in enumerate(ids)})
    _write_preds(b / cmp.RUN_PREDICTIONS, {i: n < 8 for n, i in enumerate(ids)})
    teacher = tmp_path / "predictions-cqa-dev.jsonl"  # from `distill eval` of a model spec
    _write_preds(teacher, {i: True for i in reversed(ids)})
    other = tmp_path / "other.jsonl"
    _write_preds(other, {"z1": True})

    df, skipped = cmp.compare_pairs([a, b, teacher, other], n_boot=2000)
    assert list(df.columns) == cmp.PAIR_COLUMNS
    row = df.iloc[0]
    assert (row.model_a, row.model_b, row.n) == ("std", "sal", 10)
    assert row.difference == pytest.approx(-0.4)
    assert row.mcnemar_p == pytest.approx(2 / 16)  # 4 discordant, all one way: 2 * (1/2)^4
    assert (row.a_only, row.b_only) == (0, 4) and row.ci_low <= -0.4 <= row.ci_high
    assert len(df) == 3 and df.iloc[2].model_b == str(teacher)
    assert [s[1] for s in skipped] == [str(other)] * 3

    rows = cmp.compare([a, teacher])
    assert rows.loc[1, "accuracy"] == 1.0 and rows.loc[1, "n"] == 10

    c = _finished_run(tmp_path, "nopreds", "standard", 0.5)
    with pytest.raises(tr.TrainError, match="no per-example predictions"):
        cmp.compare_pairs([a, c])

    out = tmp_path / "cmp"
    assert (
        main(["compare", str(a), str(b), str(teacher), "--out", str(out), "--n-boot", "500"]) == 0
    )
    printed = capsys.readouterr().out
    assert "McNemar" in printed and "std" in printed
    md = (out / "pairs.md").read_text().splitlines()
    assert md[0].startswith("| model_a | model_b | n | accuracy_a |") and len(md) == 5
    assert (out / "pairs.csv").read_text().splitlines()[1].startswith("std,sal,10,")
    assert (out / "comparison.csv").is_file()


def test_cli_eval_shows_progress_bars(tiny_model_dir, tmp_path, capsys):
    from distill.cli import main

    data = write_cqa(tmp_path / "data")
    out = tmp_path / "preds.jsonl"
    args = ["eval", "--model", tiny_model_dir, "--task", "cqa", "--data", str(data)]
    assert main([*args, "--limit", "3", "--predictions", str(out)]) == 0
    cap = capsys.readouterr()
    # one tqdm bar per stage, on stderr, run to completion
    assert "generating" in cap.err and "scoring options" in cap.err and "3/3" in cap.err
    assert "choice accuracy" in cap.out and "choice acc. sum" in cap.out
    rec = json.loads(out.read_text().splitlines()[0])
    assert {"choice_prediction", "choice_prediction_sum", "option_logprobs"} <= set(rec)


def test_resolve_model_tells_runs_from_model_folders(tiny_model_dir, tmp_path):
    # A model folder has a config.json too: it is a model spec, not an unfinished run
    # (this used to fail with "run 'tiny-llama' has no final model yet").
    loaded, cfg = ev.resolve_model(tiny_model_dir)
    assert cfg is None and loaded.model.config.model_type == "llama"
    half = RunDir(tmp_path / "half")
    half.create({"kind": "train", "settings": {"mode": "standard"}})
    with pytest.raises(tr.TrainError, match="no final model yet"):
        ev.resolve_model(half.path)


def test_generation_cap_comes_from_the_training_answers_not_the_evaluated_gold():
    lm = tiny.loaded("llama")
    train_ex = [example(i) for i in range(3)]
    test_ex = [example(3)]
    test_ex[0].label = " ".join(["cupboard"] * 12)  # a long gold answer must not lengthen output
    own = ev.evaluate(lm, "cqa", test_ex, choices=False)
    capped = ev.evaluate(lm, "cqa", test_ex, choices=False, cap_from=train_ex)
    from explain.formatting import answer_budget, task_answers

    assert capped.settings["max_new_tokens"] == answer_budget(lm, task_answers(train_ex))
    assert own.settings["max_new_tokens"] > capped.settings["max_new_tokens"]
