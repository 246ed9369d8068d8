"""Student training: formatting, loss masking, the four modes, checkpoints and exact resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from contextlib import nullcontext
from pathlib import Path

import pytest
import tiny
import torch

from distill import features
from distill import train as tr
from distill.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from distill.data import Example, load_task
from distill.features import collate_features, example_features, example_source, token_nll
from distill.runs import RunDir, RunError
from explain.models import LoadedModel, load_model, prepare

# A tiny memorisable CQA problem: 10 records (2 go to dev), words from tiny.CORPUS.
ITEMS = tiny.CQA_ITEMS


pytestmark = pytest.mark.usefixtures("one_thread")


def write_cqa(folder: Path) -> Path:
    """cqa.json, rationales.jsonl (first 3 question words) and PaLM-style llm/ files."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "cqa.json").open("w") as f:
        for i, (q, c, a) in enumerate(ITEMS):
            f.write(json.dumps({"id": f"q{i}", "question": q, "choices": c, "answer": a}) + "\n")
    with (folder / "rationales.jsonl").open("w") as f:
        for i, (q, _c, _a) in enumerate(ITEMS):
            words = [{"text": w, "start": 0, "end": 0, "score": 1.0} for w in q.split()[:3]]
            rec = {"id": f"q{i}", "rationale": words, "target": "generated"}
            f.write(json.dumps(rec) + "\n")
    (folder / "llm").mkdir(exist_ok=True)
    cot = [f"A {a} fits {q.lower()} So the answer is {a}.\n\nQ: more" for q, _c, a in ITEMS]
    (folder / "llm" / "train_CoT_0.json").write_text(json.dumps(cot))
    return folder / "cqa.json"


def tiny_loader(family: str = "llama"):
    """A model_loader returning a fresh tiny random model (grads are re-enabled by train)."""

    def load(spec, device=None, dtype=None, use_chat_template=True, **kwargs) -> LoadedModel:
        model = tiny.tiny_llama(0) if family == "llama" else tiny.tiny_t5(0)
        return prepare(spec, model, tiny.tiny_tokenizer(), torch.device("cpu"))

    return load


def config(tmp_path: Path, mode: str = "standard", name: str = "run", **kw) -> tr.TrainConfig:
    data = write_cqa(tmp_path / "data")
    settings = dict(
        student="tiny",
        task="cqa",
        data=str(data),
        mode=mode,
        rationales=str(tmp_path / "data") if mode in ("saliency", "hint") else None,
        steps=30,
        batch_size=8,
        lr=1e-2,
        schedule="constant",
        dev_size=2,
        eval_every=0,
        save_every=0,
        out=str(tmp_path / name),
        max_new_tokens=4,
    )
    settings.update(kw)
    return tr.TrainConfig(**settings)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run_dir).metrics() if "loss" in r]


def example(i: int = 0) -> Example:
    q, c, a = ITEMS[i]
    return Example(
        id=f"q{i}",
        task="cqa",
        fields={"question": q, "choices": c},
        label=a,
        options=c,
        llm_rationale="because plates go there",
    )


# ---------------------------------------------------------------------------------------------
# Formatting and masking


def test_features_mask_the_prompt_decoder_only():
    lm = tiny.loaded("llama")
    (f,) = example_features(lm, example(), "standard")
    prompt = example_source(lm, example(), 256).ids
    target = lm.tokenizer(" cupboard", add_special_tokens=False)["input_ids"] + [
        lm.tokenizer.eos_token_id
    ]
    assert f.input_ids == prompt + target
    assert f.labels == [-100] * len(prompt) + target
    assert f.n_targets == len(target) and f.kind == "predict" and f.weight == 1.0


def test_features_encoder_decoder_and_left_padded_batches():
    lm = tiny.loaded("t5")
    pred, expl = example_features(lm, example(), "saliency", ["plate", "washing"], alpha=0.3)
    target = lm.tokenizer("plate washing", add_special_tokens=False)["input_ids"] + [
        lm.tokenizer.eos_token_id
    ]
    assert expl.labels == target and expl.kind == "explain" and expl.weight == pytest.approx(0.7)
    assert pred.weight == pytest.approx(0.3)
    batch = collate_features([pred, expl], lm.tokenizer.pad_token_id, encoder_decoder=True)
    assert batch["labels"].shape == (2, max(len(pred.labels), len(expl.labels)))
    llama = tiny.loaded("llama")
    a, b = example_features(llama, example(), "saliency", ["plate"])
    batch = collate_features([a, b], llama.tokenizer.pad_token_id, encoder_decoder=False)
    width = batch["input_ids"].shape[1]
    for row, f in enumerate((a, b)):  # left padding: every row ends at the last position
        assert batch["input_ids"][row, width - len(f.input_ids) :].tolist() == f.input_ids
        assert batch["attention_mask"][row].sum() == len(f.input_ids)
        assert batch["labels"][row, : width - len(f.input_ids)].eq(-100).all()
    assert batch["keep"] == max(a.n_targets, b.n_targets) + 1


def test_token_nll_equals_the_models_own_loss(tiny):
    """Left padding and the trimmed vocabulary projection change nothing: the summed target
    NLL of each row equals the model's own (unpadded, full-logits) loss times its length."""
    feats = [f for i in range(3) for f in example_features(tiny, example(i), "dss")]
    batch = collate_features(feats, tiny.tokenizer.pad_token_id, tiny.is_encoder_decoder)
    nll = token_nll(tiny.model, batch, tiny.is_encoder_decoder)
    for f, got in zip(feats, nll.tolist()):
        ids = torch.tensor([f.input_ids])
        labels = torch.tensor([f.labels])
        with torch.no_grad():
            ref = tiny.model(input_ids=ids, labels=labels).loss.item() * f.n_targets
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "llama-chat", "t5"])
def test_multitask_pairs_are_told_apart_and_predict_reads_the_standard_prompt(family):
    """No marker before the input: the explain task's cue is the prompt's last line (after
    the answer cue's place, or inside the chat request / the encoder's input), so the two
    tasks stay apart for every kind of student, and the predict prompt is the standard one."""
    lm = tiny.loaded(family.split("-")[0])
    if family == "llama-chat":
        tok = copy.deepcopy(lm.tokenizer)  # tiny's tokenizer is shared: leave it as it is
        tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
        lm = dataclasses.replace(lm, tokenizer=tok)
        assert lm.has_chat_template and lm.use_chat_template
    pred, expl = example_features(lm, example(), "saliency", ["plate"])
    (std,) = example_features(lm, example(), "standard")
    src = (lambda f: f.input_ids) if lm.is_encoder_decoder else (
        lambda f: f.input_ids[: len(f.input_ids) - f.n_targets])  # fmt: skip
    assert src(pred) == src(std) and src(expl) != src(pred)
    text = lm.tokenizer.decode(src(expl), skip_special_tokens=True)
    assert "Explanation:" in text and "explain:" not in text
    assert text.rstrip().endswith("Explanation:") or family == "llama-chat"


def test_truncation_keeps_target_cue_and_options():
    lm = tiny.loaded("llama")
    ex = example()
    ex.fields = dict(ex.fields, question=" ".join(["where is the plate"] * 40) + " now?")
    (f,) = example_features(lm, ex, "standard", max_len=128)
    assert len(f.input_ids) <= 128 and f.warnings and "truncated" in f.warnings[0]
    target = [t for t in f.labels if t != -100]
    assert target[-1] == lm.tokenizer.eos_token_id
    text = lm.tokenizer.decode(f.input_ids[: len(f.input_ids) - len(target)])
    assert text.endswith("\nAnswer:") and "(e) kitchen" in text  # cue and options survive
    assert "Question: where is the plate" in text and "now?" in text  # head and tail of it


def test_batch_order_is_deterministic_and_covers_each_epoch():
    a, b = tr.BatchOrder(10, 4, seed=3), tr.BatchOrder(10, 4, seed=3)
    assert a.per_epoch == 3
    first = [a.batch(g) for g in range(3)]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    # Any access order gives the same batches (resumption jumps straight to batch g).
    assert [b.batch(g) for g in reversed(range(6))] == [a.batch(g) for g in reversed(range(6))]
    assert [a.batch(g) for g in range(3, 6)] != first  # a new epoch reshuffles
    assert [tr.BatchOrder(10, 4, seed=4).batch(g) for g in range(3)] != first


def test_length_grouped_batches_pad_less_and_stay_a_pure_function_of_the_epoch():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 200, (103,), generator=g).tolist()
    grouped = tr.BatchOrder(103, 8, seed=1, lengths=lengths, groups=4)
    plain = tr.BatchOrder(103, 8, seed=1)

    def padding(order, epoch):
        batches = [order.batch(epoch * order.per_epoch + i) for i in range(order.per_epoch)]
        assert sorted(i for b in batches for i in b) == list(range(103))  # each once an epoch
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)  # fmt: skip

    assert grouped.per_epoch == plain.per_epoch == 13
    for epoch in range(2):
        assert padding(grouped, epoch) < 0.5 * padding(plain, epoch)
    # resumption jumps straight to batch g: a fresh order gives the same batches in any order
    again = tr.BatchOrder(103, 8, seed=1, lengths=lengths, groups=4)
    assert [again.batch(g) for g in reversed(range(26))] == [
        grouped.batch(g) for g in reversed(range(26))
    ]
    assert grouped.batch(0) != grouped.batch(13)  # a new epoch regroups
    # groups <= 1 (or no lengths) is the plain order, bit for bit
    off = tr.BatchOrder(103, 8, seed=1, lengths=lengths, groups=0)
    assert [off.batch(g) for g in range(13)] == [plain.batch(g) for g in range(13)]
    with pytest.raises(ValueError, match="lengths"):
        tr.BatchOrder(10, 4, seed=0, lengths=[1, 2])


def test_training_uses_eager_attention_on_cpu_with_the_same_gradients():
    ids = torch.randint(3, 400, (3, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding in one row

    def grads(model):
        model.zero_grad()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos)
        out.logits[:, -4:].float().logsumexp(-1).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    sdpa = tiny.tiny_llama(0)
    sdpa.set_attn_implementation("sdpa")
    eager = tiny.tiny_llama(0)
    eager.set_attn_implementation("sdpa")
    assert tr.training_attention(eager, torch.device("cuda")) is None  # GPUs keep their kernel
    assert eager.config._attn_implementation == "sdpa"
    assert tr.training_attention(eager, torch.device("cpu")) == "eager"
    assert eager.config._attn_implementation == "eager"
    a, b = grads(sdpa), grads(eager)
    assert a.abs().max() > 0
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_config_validation(tmp_path):
    with pytest.raises(tr.TrainError, match="unknown mode"):
        tr.train(config(tmp_path, mode="magic"), model_loader=tiny_loader())
    with pytest.raises(tr.TrainError, match="needs rationales"):
        tr.train(config(tmp_path, mode="saliency", rationales=None), model_loader=tiny_loader())
    with pytest.raises(tr.TrainError, match="alpha"):
        tr.train(config(tmp_path, alpha=1.5), model_loader=tiny_loader())
    assert not (tmp_path / "run").exists()  # nothing was created


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize(
    "family,mode",
    [("llama", "standard"), ("llama", "saliency"), ("llama", "dss"), ("llama", "hint"),
     ("t5", "standard"), ("t5", "saliency")],
)  # fmt: skip
def test_each_mode_reduces_loss(tmp_path, family, mode):
    summary = tr.train(config(tmp_path, mode), model_loader=tiny_loader(family))
    assert summary["status"] == "finished" and summary["steps"] == 30
    ls = losses(tmp_path / "run")
    assert len(ls) == 30
    assert ls[-1] < 0.4 * ls[0], ls
    recs = [r for r in RunDir(tmp_path / "run").metrics() if "loss" in r]
    if mode in ("saliency", "dss"):
        assert all(r["rationale_loss"] is not None for r in recs)
        r = recs[-1]
        assert r["loss"] == pytest.approx(0.5 * r["label_loss"] + 0.5 * r["rationale_loss"])
    else:
        assert all(r["rationale_loss"] is None for r in recs)
    assert {"step", "lr", "examples_per_s", "elapsed", "eta_s"} <= set(recs[0])
    if mode == "hint":
        assert "accuracy_no_hint" in summary


def test_memorised_model_is_saved_and_loadable(tmp_path):
    summary = tr.train(
        config(tmp_path, steps=40, dev_size=1, batch_size=9), model_loader=tiny_loader()
    )
    run = RunDir(tmp_path / "run")
    assert run.is_finished and (run.model_dir / "model.safetensors").is_file()
    assert not run.checkpoints()  # the final model replaces them
    assert summary["n"] == 1 and 0.0 <= summary["ci_low"] <= summary["ci_high"] <= 1.0
    loaded = load_model(str(run.model_dir), device="cpu")
    assert loaded.family == "decoder-only"
    from distill.evaluate import evaluate

    train_ex = load_task("cqa", tmp_path / "data" / "cqa.json")
    result = evaluate(run.path, "cqa", train_ex, max_new_tokens=4, choices=False)
    assert result.accuracy >= 0.7  # the 9 training questions are (mostly) memorised
    cfg = run.config()
    assert cfg["seed"] == 0 and cfg["data"]["sha256"] and cfg["versions"]["torch"]
    assert cfg["settings"]["mode"] == "standard" and cfg["models"]["student"] == "tiny"
    pred_lines = (run.path / "dev_predictions.jsonl").read_text().splitlines()
    assert len(pred_lines) == 1 and "choice_prediction" in json.loads(pred_lines[0])


def test_finished_run_is_never_overwritten(tmp_path):
    cfg = config(tmp_path, steps=2)
    tr.train(cfg, model_loader=tiny_loader())
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(RunError, match="finished"):
        tr.train(cfg, model_loader=tiny_loader())
    assert (tmp_path / "run" / "summary.json").read_text() == before


def test_periodic_dev_eval_and_checkpoints(tmp_path):
    seen = []
    cfg = config(tmp_path, steps=6, eval_every=2, save_every=2, keep_checkpoints=2)
    stop = threading.Event()

    def progress(rec):
        seen.append(rec)
        if rec.get("step") == 5 and "loss" in rec:
            stop.set()

    out = tr.train(cfg, progress=progress, stop=stop, model_loader=tiny_loader())
    assert out["status"] == "stopped" and out["step"] == 5
    run = RunDir(tmp_path / "run")
    assert [s for s, _ in run.checkpoints()] == [4, 5]  # pruned to keep_checkpoints=2
    dev = [r for r in run.metrics() if "dev_accuracy" in r]
    assert [r["step"] for r in dev] == [2, 4]
    assert any(r.get("dev_accuracy") is not None for r in seen)
    assert run.status()["status"] == "stopped" and not run.is_finished
    ck = run.checkpoint_dir(5)
    assert {p.name for p in ck.iterdir()} == {
        "model.safetensors",
        "optimizer.safetensors",
        "rng.rank0.safetensors",
        "rng.rank0.json",
        "state.json",
    }


def _params(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("family,mode,accum", [("llama", "saliency", 2), ("t5", "standard", 1)])
def test_stop_and_resume_matches_uninterrupted(tmp_path, family, mode, accum):
    kw = dict(
        steps=10,
        batch_size=4,
        grad_accum=accum,
        eval_every=3,
        save_every=4,
        lr=5e-3,
        schedule="linear",
        warmup=2,
    )
    tr.train(config(tmp_path, mode, name="full", **kw), model_loader=tiny_loader(family))

    cfg = config(tmp_path, mode, name="resumed", **kw)
    stop = threading.Event()

    def progress(rec):
        if rec.get("step") == 6 and "loss" in rec:
            stop.set()

    out = tr.train(cfg, progress=progress, stop=stop, model_loader=tiny_loader(family))
    assert out["status"] == "stopped"
    seen = []
    summary = tr.train(cfg, progress=seen.append, model_loader=tiny_loader(family))
    assert summary["status"] == "finished" and summary["steps"] == 10
    assert any(r.get("message") == "resumed from step 6" for r in seen)
    assert [r["step"] for r in seen if "loss" in r] == [7, 8, 9, 10]  # steps 1-6 not redone

    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    full, resumed = _params(tmp_path / "full"), _params(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.allclose(full[k], resumed[k], atol=0, rtol=0), k


@pytest.mark.parametrize("freeze", [{"freeze_embeddings": True}, {"freeze_layers": 1}])
def test_frozen_parameters_stay_fixed_and_resume_exactly(tmp_path, freeze):
    """freeze_embeddings: the token embeddings end bit-equal to the loaded model's (the tiny
    llama's head is untied, so it still learns); freeze_layers=1 fixes block 0 as well. A
    stopped run resumes to the same model."""
    kw = dict(steps=6, batch_size=4, save_every=3, lr=5e-3, **freeze)
    tr.train(config(tmp_path, name="full", **kw), model_loader=tiny_loader())
    cfg = config(tmp_path, name="resumed", **kw)
    stop = threading.Event()

    def progress(rec):
        if rec.get("step") == 4 and "loss" in rec:
            stop.set()

    assert tr.train(cfg, progress=progress, stop=stop, model_loader=tiny_loader())["status"] == (
        "stopped"
    )
    assert tr.train(cfg, model_loader=tiny_loader())["status"] == "finished"
    start = tiny.tiny_llama(0).state_dict()
    full, resumed = _params(tmp_path / "full"), _params(tmp_path / "resumed")
    emb, block0 = "model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(full[emb], start[emb])
    assert not torch.equal(full["lm_head.weight"], start["lm_head.weight"])
    assert not torch.equal(full["model.layers.1.mlp.up_proj.weight"],
                           start["model.layers.1.mlp.up_proj.weight"])  # fmt: skip
    fixed = [k for k in start if torch.equal(full[k], start[k])]
    if "freeze_layers" in freeze:
        block0_keys = [k for k in start if k.startswith("model.layers.0.")]
        assert sorted(fixed) == sorted([emb, *block0_keys])
    else:
        assert fixed == [emb]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # The same run without freezing moves the embeddings and block 0: the checks can fail.
    tr.train(config(tmp_path, name="free", steps=6, batch_size=4, lr=5e-3),
             model_loader=tiny_loader())  # fmt: skip
    free = _params(tmp_path / "free")
    assert not torch.equal(free[emb], start[emb]) and not torch.equal(free[block0], start[block0])


def test_freeze_layers_stops_backward_below_the_trained_blocks():
    """With block 0 and the embeddings fixed, block 0's output carries no autograd graph, so
    backward never enters it (the speed-up); block 1's output does."""
    model = tiny.tiny_llama(0)
    n = tr.freeze_layers(model, 1)
    blocks = tr.transformer_blocks(model)
    assert n == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert n == model.get_input_embeddings().weight.numel() + sum(
        p.numel() for p in blocks[0].parameters()
    )
    seen = {}
    for i, block in enumerate(blocks):
        block.register_forward_hook(
            lambda m, a, out, i=i: seen.__setitem__(i, (out[0] if isinstance(out, tuple) else out))
        )
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    assert not seen[0].requires_grad and seen[1].requires_grad
    assert all(p.grad is None for p in blocks[0].parameters())
    assert all(p.grad is not None for p in blocks[1].parameters())


def test_freeze_layers_bad_values():
    with pytest.raises(tr.TrainError, match="has 2 blocks"):
        tr.freeze_layers(tiny.tiny_llama(0), 3)
    with pytest.raises(tr.TrainError, match="decoder-only"):
        tr.freeze_layers(tiny.tiny_t5(0), 1)
    with pytest.raises(tr.TrainError, match="must not be negative"):
        tr.TrainConfig(student="s", task="cqa", data="d", freeze_layers=-1).validate()
    # Freezing blocks freezes the embeddings under them, and the record says so.
    assert tr.TrainConfig(student="s", task="cqa", data="d", freeze_layers=2).freeze_embeddings
    assert not tr.TrainConfig(student="s", task="cqa", data="d").freeze_embeddings


def test_kill_then_resume_from_last_checkpoint(tmp_path):
    kw = dict(steps=8, batch_size=4, save_every=3, lr=5e-3)
    tr.train(config(tmp_path, name="full", **kw), model_loader=tiny_loader())
    cfg = config(tmp_path, name="killed", **kw)

    def crash(rec):
        if rec.get("step") == 7 and "loss" in rec:
            raise RuntimeError("power cut")  # like a kill after step 7: last checkpoint is 6

    with pytest.raises(RuntimeError):
        tr.train(cfg, progress=crash, model_loader=tiny_loader())
    run = RunDir(tmp_path / "killed")
    assert run.status()["status"] == "failed" and run.latest_checkpoint()[0] == 6
    assert len(losses(run.path)) == 7  # step 7 was logged before the "kill"
    seen = []
    tr.train(cfg, progress=seen.append, model_loader=tiny_loader())
    assert [r["step"] for r in seen if "loss" in r] == [7, 8]
    assert losses(run.path) == losses(tmp_path / "full")
    full, again = _params(tmp_path / "full"), _params(run.path)
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_resume_with_other_settings_is_refused(tmp_path):
    stop = threading.Event()
    stop.set()
    tr.train(config(tmp_path, steps=5), stop=stop, model_loader=tiny_loader())
    with pytest.raises(RunError, match=r"other settings \(settings\.lr\)"):
        tr.train(config(tmp_path, steps=5, lr=1e-3), model_loader=tiny_loader())


def test_run_recorded_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """A run stopped before freeze_layers/freeze_embeddings existed (its record lacks them)
    resumes when they keep their defaults, and is refused when one is set otherwise."""
    stop = threading.Event()
    stop.set()
    for name in ("old", "old2"):
        tr.train(config(tmp_path, name=name, steps=5), stop=stop, model_loader=tiny_loader())
        path = tmp_path / name / "config.json"
        record = json.loads(path.read_text())
        del record["settings"]["freeze_layers"], record["settings"]["freeze_embeddings"]
        path.write_text(json.dumps(record))
    summary = tr.train(config(tmp_path, name="old", steps=5), model_loader=tiny_loader())
    assert summary["status"] == "finished"
    with pytest.raises(RunError, match=r"\(settings\.freeze_embeddings, settings\.freeze_layers\)"):
        tr.train(config(tmp_path, name="old2", steps=5, freeze_layers=1),
                 model_loader=tiny_loader())  # fmt: skip


def test_run_recorded_before_the_task_marker_existed_was_a_prefix_run(tmp_path):
    """Runs recorded before task_marker existed trained with "predict:" / "explain:": one
    stopped then is resumed as such, and refused as a "cue" run (its default now)."""
    stop = threading.Event()
    stop.set()
    for name in ("old", "old2"):
        tr.train(config(tmp_path, "saliency", name=name, steps=5, task_marker="prefix"),
                 stop=stop, model_loader=tiny_loader())  # fmt: skip
        path = tmp_path / name / "config.json"
        record = json.loads(path.read_text())
        del record["settings"]["task_marker"]
        path.write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"settings\.task_marker"):
        tr.train(config(tmp_path, "saliency", name="old2", steps=5), model_loader=tiny_loader())
    summary = tr.train(config(tmp_path, "saliency", name="old", steps=5, task_marker="prefix"),
                       model_loader=tiny_loader())  # fmt: skip
    assert summary["status"] == "finished"
    with pytest.raises(tr.TrainError, match="unknown task marker"):
        tr.train(config(tmp_path, "saliency", name="x", task_marker="suffix"),
                 model_loader=tiny_loader())  # fmt: skip


def test_model_load_error_leaves_no_run_folder(tmp_path):
    from explain.errors import ModelSpecError

    def bad_loader(spec, **kwargs):
        raise ModelSpecError(f"unknown model spec {spec!r}")

    with pytest.raises(ModelSpecError):
        tr.train(config(tmp_path), model_loader=bad_loader)
    assert not (tmp_path / "run").exists()  # the corrected command may reuse the name


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    lm = tiny.loaded("llama")
    model = lm.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = config(tmp_path, steps=10, warmup=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, tr.lr_lambda(cfg, 10))
    for _ in range(2):
        model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
        opt.step()
        sched.step()
    run = RunDir(tmp_path / "ck")
    run.path.mkdir()
    torch.manual_seed(123)
    path = save_checkpoint(run, 2, model, opt, sched, {"elapsed": 1.5})
    expected = torch.rand(3)

    model2 = tiny.tiny_llama(1).train()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, tr.lr_lambda(cfg, 10))
    torch.manual_seed(0)
    meta = load_checkpoint(path, model2, opt2, sched2)
    assert meta["step"] == 2 and meta["elapsed"] == 1.5
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k])
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
    assert sched.state_dict()["last_epoch"] == sched2.state_dict()["last_epoch"] == 2


def test_rationale_source_records_the_extraction_settings(tmp_path):
    ext = RunDir(tmp_path / "ext")
    ext.create({"kind": "extract", "task": "cqa", "teacher": "big", "top_k": 3})
    (ext.path / "rationales.jsonl").write_text('{"id": "q0", "rationale": ["plate"]}\n')
    src = tr.rationale_source(ext.path)
    assert src["settings"]["teacher"] == "big" and src["settings"]["top_k"] == 3
    assert len(src["sha256"]) == 64 and "versions" not in src["settings"]


# ---------------------------------------------------------------------------------------------
# The objective: per-token means over the effective batch, weights from the mode


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _step_grads(lm, items, micro: list[list[int]]) -> list[torch.Tensor]:
    """Accumulated gradient of one optimizer step made of the micro-batches ``micro``."""
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    counts = tr.step_counts(items, micro)
    pad, enc_dec = lm.tokenizer.pad_token_id, lm.is_encoder_decoder
    for idx in micro:
        loss, _ = tr.batch_loss(model, [items[i] for i in idx], counts, pad, enc_dec, "cpu",
                                nullcontext())  # fmt: skip
        loss.backward()
    return _grads(model)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_accumulation_equals_one_large_batch(family):
    lm = tiny.loaded(family)
    exs = [example(i) for i in range(8)]
    words = {f"q{i}": ITEMS[i][0].split()[: 1 + i % 4] for i in range(8)}  # unequal lengths
    items = [example_features(lm, e, "saliency", words[e.id], alpha=0.3) for e in exs]
    big = _step_grads(lm, items, [list(range(8))])
    acc = _step_grads(lm, items, [[0, 1], [2, 3], [4, 5], [6, 7]])
    for a, b in zip(big, acc):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # The old rule (mean per micro-batch, divided by the accumulation) is measurably different.
    model = lm.model
    for p in model.parameters():
        p.grad = None
    for idx in [[0, 1], [2, 3], [4, 5], [6, 7]]:
        counts = tr.step_counts(items, [idx])
        loss, _ = tr.batch_loss(model, [items[i] for i in idx], counts, 0, lm.is_encoder_decoder,
                                "cpu", nullcontext())  # fmt: skip
        (loss / 4).backward()
    old = _grads(model)
    assert max((a - b).abs().max().item() for a, b in zip(big, old)) > 1e-4


def _loss_and_grads(lm, items, share: bool, collate=None):
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    counts = tr.step_counts(items, [list(range(len(items)))])
    loss, sums = tr.batch_loss(model, items, counts, lm.tokenizer.pad_token_id,
                               lm.is_encoder_decoder, "cpu", nullcontext(), share)  # fmt: skip
    loss.backward()
    return loss.item(), sums, _grads(model)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("mode", ["saliency", "dss", "random"])
def test_shared_prompt_rows_keep_every_pairs_loss_and_gradient(family, mode):
    """Reading a multi-task example's prompt once (one row, a block mask, the pairs' own
    positions) gives the objective, per-kind sums and gradient of one row per pair."""
    lm = tiny.loaded(family)
    words = {f"q{i}": ITEMS[i][0].split()[: 1 + i % 4] for i in range(6)}
    items = [example_features(lm, example(i), mode, words[f"q{i}"], alpha=0.3, seed=1)
             for i in range(6)]  # fmt: skip
    assert all(len(g) == 2 for g in items)
    for i, g in enumerate(items):  # the whole prompt up to the cue is shared
        n = features.shared_prompt(g)
        head = lm.tokenizer.decode(g[0].input_ids[:n])
        assert head.startswith("Question: " + ITEMS[i][0]) and "(e) " in head
        assert g[0].input_ids[n] != g[1].input_ids[n]  # "Answer" / "Explanation"
    packed = features.collate_groups(items, 0, False)
    single = collate_features([f for g in items for f in g], 0, False)
    assert packed["input_ids"].shape[0] == 6 and single["input_ids"].shape[0] == 12
    assert packed["attention_mask"].sum() < 0.7 * single["attention_mask"].sum()
    a_loss, a_sums, a_grads = _loss_and_grads(lm, items, share=True)
    b_loss, b_sums, b_grads = _loss_and_grads(lm, items, share=False)
    assert a_loss == pytest.approx(b_loss, rel=1e-5)
    assert a_sums == pytest.approx(b_sums, rel=1e-5)
    for a, b in zip(a_grads, b_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_shared_prompt_rows_need_their_block_mask():
    """Without the block mask the explanation would read the answer before it: the losses
    change. So the equality above is the mask's doing, not an accident of the data."""
    lm = tiny.loaded("llama")
    items = [example_features(lm, example(i), "saliency", ["plate", "washing"], alpha=0.5)
             for i in range(3)]  # fmt: skip
    batch = features.collate_groups(items, 0, False)
    visible = batch["visible"]
    with torch.no_grad():
        good = token_nll(lm.model, batch, False)
        width = visible.shape[-1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        real = batch["attention_mask"].bool()[:, None, :]  # padding stays hidden
        batch["visible"] = (causal & real) | torch.eye(width, dtype=torch.bool)
        leaky = token_nll(lm.model, batch, False)
        ref = token_nll(lm.model, collate_features([f for g in items for f in g], 0, False), False)
    assert torch.allclose(good, ref, rtol=1e-5, atol=1e-5)
    exact = (good - ref).abs().max().item()
    # the leak moves the explain losses by far more than rounding (~1e-6 of them) does
    assert (leaky[1::2] - ref[1::2]).abs().max().item() > 100 * max(exact, 1e-5)
    assert torch.allclose(leaky[0::2], ref[0::2], rtol=1e-5, atol=1e-5)  # predict comes first


def test_pairs_without_a_common_prompt_still_train_exactly():
    """A mode that marks its tasks before the input (a user's registered variant) shares
    nothing: its pairs still sit side by side in one row with their own losses."""
    lm = tiny.loaded("llama")
    items = [example_features(lm, example(i), "saliency", ["plate"]) for i in range(3)]
    marked = [[dataclasses.replace(f, input_ids=[7 + k] + f.input_ids,
                                   labels=[-100] + f.labels) for k, f in enumerate(g)]
              for g in items]  # fmt: skip
    assert all(features.shared_prompt(g) == 0 for g in marked)
    a_loss, _, a_grads = _loss_and_grads(lm, marked, share=True)
    b_loss, _, b_grads = _loss_and_grads(lm, marked, share=False)
    assert a_loss == pytest.approx(b_loss, rel=1e-5)
    for a, b in zip(a_grads, b_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_objective_weights_alpha_and_examples_without_rationale():
    lm = tiny.loaded("llama")
    alpha = 0.3
    with_r = example_features(lm, example(0), "saliency", ["plate", "washing"], alpha=alpha)
    without = example_features(lm, example(1), "saliency", None, alpha=alpha)
    assert [f.kind for f in without] == ["predict"] and without[0].weight == 1.0
    items = [with_r, without]
    counts = tr.step_counts(items, [[0, 1]])
    feats = with_r + without
    batch = collate_features(feats, 0, False)
    with torch.no_grad():
        nll = token_nll(lm.model, batch, False).tolist()
        loss, sums = tr.batch_loss(lm.model, items, counts, 0, False, "cpu", nullcontext())
    n_pred, n_expl = counts["predict"], counts["explain"]
    expected = (alpha * nll[0] + 1.0 * nll[2]) / n_pred + (1 - alpha) * nll[1] / n_expl
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert sums["predict"] == pytest.approx(nll[0] + nll[2], rel=1e-5)
    # A batch with no rationale at all is plain fine-tuning: the mean label NLL, full weight.
    loss, _ = tr.batch_loss(lm.model, [without], tr.step_counts([without], [[0]]), 0, False,
                            "cpu", nullcontext())  # fmt: skip
    assert loss.item() == pytest.approx(nll[2] / without[0].n_targets, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Hints, checkpoints per process, the final model, precision


def _extraction(tmp_path: Path, target: str) -> Path:
    ext = RunDir(tmp_path / f"ext-{target}")
    ext.create({"kind": "extract", "task": "cqa", "teacher": "big", "top_k": 3, "target": target})
    src = (tmp_path / "data" / "rationales.jsonl").read_text()
    (ext.path / "rationales.jsonl").write_text(src)
    return ext.path


def test_hint_mode_refuses_gold_target_rationales(tmp_path):
    write_cqa(tmp_path / "data")
    gold = _extraction(tmp_path, "gold")
    with pytest.raises(tr.TrainError, match="gold label"):
        tr.train(config(tmp_path, "hint", rationales=str(gold)), model_loader=tiny_loader())
    assert not (tmp_path / "run").exists()
    own = _extraction(tmp_path, "generated")
    summary = tr.train(config(tmp_path, "hint", rationales=str(own), steps=2),
                       model_loader=tiny_loader())  # fmt: skip
    assert summary["hint_coverage"] == 1.0 and "accuracy_no_hint" in summary


def test_each_process_restores_its_own_random_state(tmp_path):
    lm = tiny.loaded("llama")
    opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run = RunDir(tmp_path / "ck")
    run.path.mkdir()
    from distill.checkpoints import save_rng

    staged = run.staging_dir(3)
    torch.manual_seed(1)
    save_rng(staged, 1)  # what process 1 would have written into the shared staging folder
    expect1 = torch.rand(2)
    torch.manual_seed(0)
    # process 0 stages (barrier is a no-op here): keep process 1's file by writing rank 0 only
    save_checkpoint(run, 3, lm.model, opt, sched, {}, rank=0)
    path = run.checkpoint_dir(3)
    assert not (path / "rng.rank1.json").exists()  # staging was fresh: rank 1 must write again
    torch.manual_seed(1)
    save_rng(path, 1)
    torch.manual_seed(5)
    load_checkpoint(path, lm.model, opt, sched, rank=1)
    assert torch.equal(torch.rand(2), expect1)
    with pytest.raises(CheckpointError, match="process 2"):
        load_checkpoint(path, lm.model, opt, sched, rank=2)


def test_final_model_swap_replaces_a_stale_folder_whole(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.model_dir.mkdir()
    (run.model_dir / "stale.txt").write_text("from a finish that died")
    lm = tiny.loaded("llama")
    tr.save_final_model(run, lm.model, lm.tokenizer)
    names = {p.name for p in run.model_dir.iterdir()}
    assert "stale.txt" not in names and "model.safetensors" in names
    assert not (run.path / ".model.tmp").exists() and not (run.path / ".model.old").exists()


def test_one_process_trains_with_and_without_bf16(tmp_path):
    a = tr.train(config(tmp_path, name="bf16", steps=2, bf16=True), model_loader=tiny_loader())
    b = tr.train(config(tmp_path, name="fp32", steps=2, bf16=False), model_loader=tiny_loader())
    assert a["status"] == b["status"] == "finished"
    assert losses(tmp_path / "bf16") != losses(tmp_path / "fp32")  # autocast really applied


def test_non_finite_settings_and_losses_are_refused(tmp_path):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(tr.TrainError, match="finite"):
            tr.train(config(tmp_path, lr=bad), model_loader=tiny_loader())
    assert not (tmp_path / "run").exists()
    with pytest.raises(tr.TrainError, match="loss became"):
        tr.train(config(tmp_path, lr=1e30, max_grad_norm=None, steps=5),
                 model_loader=tiny_loader())  # fmt: skip


def test_token_nll_on_a_gpt2_style_student():
    """Learned absolute positions (GPT-2): left padding with explicit positions changes nothing."""
    lm = tiny.loaded("gpt2")
    feats = [f for i in range(3) for f in example_features(lm, example(i), "dss")]
    nll = token_nll(lm.model, collate_features(feats, 0, False), False)
    for f, got in zip(feats, nll.tolist()):
        with torch.no_grad():
            ref = lm.model(input_ids=torch.tensor([f.input_ids]),
                           labels=torch.tensor([f.labels])).loss.item()  # fmt: skip
        assert got == pytest.approx(ref * f.n_targets, rel=1e-4, abs=1e-4)


def test_dev_evaluation_leaves_the_training_unchanged(tmp_path):
    """Periodic dev evaluation (generation and option scoring, model to eval mode and back)
    neither moves the weights nor draws from the random streams: with dropout on, a run that
    evaluates every 2 steps ends bit-equal to one that never does. (`distill train --preset`
    evaluates every 50 steps, the experiment only at the end: the same student.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    def loader(dropout: float):
        def load(spec, device=None, dtype=None, use_chat_template=True, **kwargs) -> LoadedModel:
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=400, attention_dropout=dropout, **tiny._DECODER)
            return prepare(spec, LlamaForCausalLM(cfg).eval(), tiny.tiny_tokenizer(),
                           torch.device("cpu"))  # fmt: skip

        return load

    kw = dict(steps=6, batch_size=4, lr=5e-3, save_every=0)
    tr.train(config(tmp_path, name="quiet", eval_every=0, **kw), model_loader=loader(0.3))
    tr.train(config(tmp_path, name="evals", eval_every=2, **kw), model_loader=loader(0.3))
    evals = [r for r in RunDir(tmp_path / "evals").metrics() if "dev_accuracy" in r]
    assert len(evals) >= 3  # steps 2, 4 and the final one
    quiet, loud = _params(tmp_path / "quiet"), _params(tmp_path / "evals")
    assert quiet.keys() == loud.keys()
    assert all(torch.equal(quiet[k], loud[k]) for k in quiet)
    assert losses(tmp_path / "quiet") == losses(tmp_path / "evals")
    # The dropout is live (so a draw by the evaluation would show): without it, other weights.
    tr.train(config(tmp_path, name="nodrop", eval_every=0, **kw), model_loader=loader(0.0))
    other = _params(tmp_path / "nodrop")
    assert not all(torch.equal(quiet[k], other[k]) for k in quiet)
