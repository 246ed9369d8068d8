"""The GPU path (issue 8): tests marked ``cuda`` run only where torch sees a CUDA GPU.

Without one they are skipped by conftest.py with the reason; ``bench/gpu_check.sh`` runs them
with ``pytest -m cuda``. Every model goes to ``DEVICE`` through the project's own device option
(``load_model(device=...)``; training's Accelerator picks the GPU itself and the test checks
that it did). They use the real SmolLM2 pack (the small student) so they finish in seconds.

The tests of :mod:`distill.gpu`'s batch-size rule at the top are pure and run everywhere.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from distill.gpu import (
    EFFECTIVE_TRAIN_BATCH,
    EVAL_CAP,
    EXTRACT_CAP,
    GIB,
    gpu_batch_sizes,
    safetensors_params,
)

DEVICE = "cuda"
STUDENT = "smollm2-135m-instruct"
# Parameter counts of the default packs (as their safetensors headers give them).
SMOLLM2_PARAMS = 134_515_008
QWEN_PARAMS = 1_777_088_000
GB = 10**9


# ---------------------------------------------------------------------------------------------
# The gpu preset's batch sizes (pure; no GPU needed)


def test_gpu_batch_sizes_for_real_gpus_are_sensible_and_monotone():
    sizes = {gb: gpu_batch_sizes(gb * GB, SMOLLM2_PARAMS, QWEN_PARAMS) for gb in (24, 80, 141)}
    rtx, h100, h200 = sizes[24], sizes[80], sizes[141]
    # Memory never changes the recipe: the effective training batch is the same everywhere.
    assert {s.effective_train for s in sizes.values()} == {EFFECTIVE_TRAIN_BATCH}
    # A 135M student trains its whole batch at once on any of them.
    assert rtx.train == h100.train == h200.train == EFFECTIVE_TRAIN_BATCH
    assert rtx.grad_accum == 1
    # The 1.8B teacher's attribution pass is what memory limits.
    assert 2 <= rtx.extract <= 8
    assert 16 <= h100.extract <= EXTRACT_CAP
    assert h100.extract <= h200.extract <= EXTRACT_CAP
    assert rtx.eval == h100.eval == h200.eval == EVAL_CAP
    for s in sizes.values():  # powers of two: batches divide evenly, kernels like them
        assert s.extract & (s.extract - 1) == 0 and s.eval & (s.eval - 1) == 0


def test_gpu_batch_sizes_never_decrease_with_memory():
    last = None
    for gb in (1, 2, 4, 6, 8, 12, 16, 24, 32, 40, 48, 80, 96, 141, 192):
        s = gpu_batch_sizes(gb * GB, SMOLLM2_PARAMS, QWEN_PARAMS)
        assert s.train * s.grad_accum == EFFECTIVE_TRAIN_BATCH
        if last is not None:
            assert s.train >= last.train and s.extract >= last.extract and s.eval >= last.eval
            assert s.usable_bytes >= last.usable_bytes
        last = s
    # Between a tiny GPU and a large one, each size actually grows.
    small = gpu_batch_sizes(8 * GB, SMOLLM2_PARAMS, QWEN_PARAMS)
    assert small.train < last.train and small.extract < last.extract and small.eval < last.eval
    assert small.grad_accum > 1  # the student's micro-batch shrank; accumulation keeps 32


def test_gpu_batch_sizes_shrink_for_bigger_models():
    base = gpu_batch_sizes(80 * GB, SMOLLM2_PARAMS, QWEN_PARAMS)
    big = gpu_batch_sizes(80 * GB, 1_500_000_000, 7_000_000_000)
    assert big.train <= base.train and big.extract < base.extract and big.eval <= base.eval
    assert big.effective_train == EFFECTIVE_TRAIN_BATCH


def test_gpu_batch_sizes_on_a_tiny_gpu_are_at_least_one():
    for total in (1, GIB // 2, 2 * GIB, 3 * GIB):
        s = gpu_batch_sizes(total, SMOLLM2_PARAMS, QWEN_PARAMS)
        assert s.train == 1 and s.grad_accum == EFFECTIVE_TRAIN_BATCH
        assert s.extract >= 1 and s.eval >= 1
    # no teacher (modes without rationales): extraction is simply capped
    assert gpu_batch_sizes(80 * GB, SMOLLM2_PARAMS, 0).extract == EXTRACT_CAP


def test_gpu_batch_sizes_keep_another_effective_batch_exactly():
    for eff in (8, 24, 48):
        for gb in (4, 8, 80):
            s = gpu_batch_sizes(gb * GB, SMOLLM2_PARAMS, QWEN_PARAMS, effective_train=eff)
            assert s.train * s.grad_accum == eff


@pytest.mark.parametrize(
    "args",
    [(0, 1, 1), (-5, 1, 1), (80 * GB, -1, 1), (80 * GB, 1, -1), (1.5, 1, 1), (True, 1, 1)],
)
def test_gpu_batch_sizes_refuse_nonsense(args):
    with pytest.raises(ValueError, match="must be"):
        gpu_batch_sizes(*args)


def test_safetensors_params_reads_headers_only(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "m.safetensors"))
    assert safetensors_params(tmp_path) == 17
    assert safetensors_params(tmp_path / "nothing") is None


def test_gpu_preset_takes_its_batch_sizes_from_the_gpu(monkeypatch, tmp_path):
    """On a GPU the gpu preset splits its effective batch into micro-batches that fit, and
    sizes extraction and evaluation from the memory; explicit sizes win; without a GPU the
    preset's fixed sizes stay."""
    import distill.gpu as gpu
    from distill.pipeline import train_config
    from distill.plan import PRESETS, make_plan

    seen = []

    def fake(student, teacher, effective_train):
        seen.append((student, teacher, effective_train))
        return gpu.gpu_batch_sizes(24 * 1024**3, 135_000_000, 1_540_000_000, effective_train)

    monkeypatch.setattr(gpu, "detect_gpu_batch_sizes", fake)
    plan = make_plan("esnli", str(tmp_path / "x"), preset="gpu")
    want = gpu.gpu_batch_sizes(24 * 1024**3, 135_000_000, 1_540_000_000, 32)
    assert seen[-1][2] == PRESETS["gpu"]["batch_size"] == 32
    assert plan.extract_batch == want.extract and plan.eval_batch == want.eval
    cfg = train_config(plan, "standard", 0)
    assert (cfg.batch_size, cfg.grad_accum) == (want.train, want.grad_accum)
    assert cfg.batch_size * cfg.grad_accum == 32
    assert cfg.eval_batch_size == want.eval
    assert plan.gpu_sizes == want.to_dict()

    mine = make_plan("esnli", str(tmp_path / "y"), preset="gpu", extract_batch=3,
                     eval_batch=5, batch_size=64)  # fmt: skip
    assert seen[-1][2] == 64
    assert (mine.extract_batch, mine.eval_batch) == (3, 5)

    monkeypatch.setattr(gpu, "detect_gpu_batch_sizes", lambda *a: None)
    plain = make_plan("esnli", str(tmp_path / "z"), preset="gpu")
    assert plain.extract_batch == PRESETS["gpu"]["extract_batch"] and plain.gpu_sizes is None
    assert "grad_accum" not in plain.train_settings


# ---------------------------------------------------------------------------------------------
# On the GPU


def _esnli(limit: int):
    from distill.data import default_path, load_task
    from distill.datasets import datasets_dir

    return load_task("esnli", default_path("esnli", datasets_dir()), limit=limit)


def _cqa(limit: int):
    from distill.data import default_path, load_task
    from distill.datasets import datasets_dir

    return load_task("cqa", default_path("cqa", datasets_dir()), limit=limit)


class DeviceLoader:
    """``load_model`` that records the device each load asked for, and sends loads that name
    none to ``DEVICE`` (the app's and evaluation's loads)."""

    def __init__(self) -> None:
        self.devices: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, spec, **kw):
        from explain.models import load_model

        kw.setdefault("device", DEVICE)
        loaded = load_model(spec, **kw)
        with self.lock:
            self.devices.append(loaded.device.type)
        return loaded


@pytest.fixture(scope="module")
def student():
    from explain.models import load_model

    return load_model(STUDENT, device=DEVICE)


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda-runs")


@pytest.fixture(scope="module")
def extraction(gpu_runs):
    """32 e-SNLI rationales from the SmolLM2 pack as teacher, in bf16 on the GPU."""
    from distill.extract import extract
    from explain.models import load_model

    teacher = load_model(STUDENT, device=DEVICE, dtype="bf16")
    examples = _esnli(32)
    out = gpu_runs / "extract"
    summary = extract(teacher, examples, out, task="esnli", top_k=3, batch_size=16,
                      faithfulness_limit=4)  # fmt: skip
    return {"summary": summary, "dir": out, "examples": examples, "teacher": teacher}


@pytest.fixture(scope="module")
def trained(gpu_runs, extraction):
    """20 bf16 training steps of the saliency mode on the extraction's examples."""
    from distill.data import default_path
    from distill.datasets import datasets_dir
    from distill.train import TrainConfig, train

    loader = DeviceLoader()
    data = str(default_path("esnli", datasets_dir()))
    cfg = TrainConfig(student=STUDENT, task="esnli", data=data,
                      mode="saliency", rationales=str(extraction["dir"]), steps=20, bf16=True,
                      batch_size=8, lr=1e-4, limit=32, dev_size=8, dev_limit=8, eval_every=0,
                      save_every=0, out=str(gpu_runs / "train-saliency"))  # fmt: skip
    summary = train(cfg, model_loader=loader)
    return {"summary": summary, "config": cfg, "devices": loader.devices}


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# bf16 keeps 8 bits of mantissa (~3 significant digits), with fp32 accumulation in matmuls; a
# gradient through 30 layers then differs from fp32 by a few tenths of a percent per word. The
# same comparison on a CPU (bf16 vs fp32, this file's 16 inputs) gave cosines 0.9975-0.9999;
# 0.99 leaves room for GPU kernels (fused attention) that round differently.
MIN_COSINE = 0.99
# Top-k may swap words whose fp32 scores are this close (fraction of the largest fp32 score) to
# the k-th: such near-ties are the only top-k differences bf16 rounding can cause.
TIE = 0.05


@pytest.mark.cuda
def test_bf16_attribution_equals_fp32_within_tolerance():
    from distill.tasks import get_task
    from explain.models import load_model
    from explain.pipeline import explain_batch

    k = 5
    runs = {}
    for dtype in ("fp32", "bf16"):
        loaded = load_model(STUDENT, device=DEVICE, dtype=dtype)
        assert loaded.device.type == "cuda"
        assert next(loaded.model.parameters()).dtype == loaded.dtype
        for task, examples in (("esnli", _esnli(8)), ("cqa", _cqa(8))):
            # The gold answers as targets: both precisions attribute the same tokens.
            runs[dtype, task] = explain_batch(
                loaded,
                [ex.fields for ex in examples],
                template=get_task(task).template,
                answers=[ex.label for ex in examples],
                top_k=k,
            )
    identical = 0
    for task in ("esnli", "cqa"):
        for full, half in zip(runs["fp32", task], runs["bf16", task]):
            assert [w.text for w in full.words] == [w.text for w in half.words]
            a = [w.score for w in full.words if w.is_input]
            b = [w.score for w in half.words if w.is_input]
            assert all(math.isfinite(x) for x in b)
            assert _cosine(a, b) >= MIN_COSINE, (task, full.answer, _cosine(a, b))
            # Words by position: a word such as "woman" often occurs twice.
            top_full = [(w.start, w.text) for w in full.rationale]
            top_half = [(w.start, w.text) for w in half.rationale]
            identical += top_full == top_half
            kth = min(w.score for w in full.rationale)  # the rationale is in text order
            fp32_score = {(w.start, w.text): w.score for w in full.words if w.is_input}
            for word in set(top_half) - set(top_full):
                assert fp32_score[word] >= kth - TIE * max(a), (task, top_full, top_half)
    assert identical >= 12  # of 16: most top-k lists are exactly the same


@pytest.mark.cuda
def test_generation_on_cuda_gives_an_answer(student):
    from explain.pipeline import explain

    assert student.device.type == "cuda"
    assert next(student.model.parameters()).is_cuda
    ex = _esnli(1)[0]
    from distill.tasks import get_task

    template = get_task("esnli").template
    result = explain(student, ex.fields, template=template, top_k=3, max_new_tokens=16)
    assert result.target == "generated"
    assert result.answer.strip() and result.output_ids
    assert len(result.rationale) == 3
    assert all(math.isfinite(s) for s in result.token_scores)
    assert result.settings["model"]["device"].startswith("cuda")


@pytest.mark.cuda
def test_extraction_of_32_examples_on_cuda(extraction):
    from distill.runs import read_jsonl

    summary, teacher = extraction["summary"], extraction["teacher"]
    assert teacher.device.type == "cuda" and str(teacher.dtype) == "torch.bfloat16"
    assert summary["n"] == 32 and summary["seconds"] > 0
    records = list(read_jsonl(Path(extraction["dir"]) / "rationales.jsonl"))
    assert [r["id"] for r in records] == [ex.id for ex in extraction["examples"]]
    assert all(len(r["rationale"]) == 3 for r in records)
    assert sum(r.get("faithfulness") is not None for r in records) == 4


@pytest.mark.cuda
def test_twenty_bf16_training_steps_finish_with_a_finite_loss(trained):
    from distill.runs import RunDir

    summary = trained["summary"]
    assert trained["devices"] == ["cuda"]  # the Accelerator put the student on the GPU
    assert summary["steps"] == 20 and summary["settings"]["bf16"] is True
    assert math.isfinite(summary["final_loss"])
    losses = [r["loss"] for r in RunDir(summary["run_dir"]).metrics() if "loss" in r]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert (Path(summary["model_dir"]) / "model.safetensors").is_file()


@pytest.mark.cuda
def test_evaluation_of_the_trained_run_on_cuda(trained):
    from distill.data import split
    from distill.evaluate import evaluate

    loader = DeviceLoader()
    _, dev = split(_esnli(32), 8, 0)
    result = evaluate(trained["summary"]["run_dir"], "esnli", dev, model_loader=loader)
    assert loader.devices == ["cuda"]
    assert result.n == 8 and result.settings["mode"] == "saliency"
    assert 0.0 <= result.accuracy <= 1.0 and result.choice_accuracy is not None
    assert all(isinstance(p["prediction"], str) for p in result.predictions)
    json.dumps(result.to_dict())  # the record the experiment saves


@pytest.mark.cuda
def test_app_explain_through_gradio_client_on_cuda(tmp_path):
    from gradio_client import Client
    from test_app import call, explain_args, is_error, launch, write_cqa

    write_cqa(tmp_path / "datasets")
    runs = tmp_path / "runs"
    runs.mkdir()
    loader = DeviceLoader()
    demo, url = launch(STUDENT, runs, tmp_path / "datasets", loader)
    try:
        client = Client(url, verbose=False)
        status, answer, hl, heat, bar, rat, token, models = call(
            client, "/explain", *explain_args(STUDENT), timeout=300
        )
        assert not is_error(status) and "saliency" in status, status
        assert answer.startswith("**Teacher's answer")
        assert "kd-highlight" in hl and rat.count('class="kd-chip"') == 3
        assert json.loads(heat["plot"])["data"]
        assert loader.devices == ["cuda"]
        assert demo.kdlens.model_state(STUDENT) == "ready on cuda"
    finally:
        demo.kdlens.jobs.stop()
        demo.kdlens.jobs.wait(30)
        demo.close()
