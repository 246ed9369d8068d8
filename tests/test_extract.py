"""Dataset-level extraction: batched equals one at a time, kill and resume, caching."""

import json
import threading

import pytest

from distill.data import load_task
from distill.extract import RATIONALES, extract
from distill.runs import read_jsonl


@pytest.fixture
def cqa_examples(datasets_dir):
    return load_task("cqa", datasets_dir / "cqa/cqa_train.json", limit=6)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _close_records(a, b):
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert x["teacher_answer"] == y["teacher_answer"]
        assert [w["text"] for w in x["rationale"]] == [w["text"] for w in y["rationale"]]
        for wx, wy in zip(x["words"], y["words"]):
            assert wx["text"] == wy["text"]
            assert wx["score"] == pytest.approx(wy["score"], rel=1e-4, abs=1e-7)
        for key in ("comprehensiveness", "sufficiency", "random_comprehensiveness"):
            assert x["faithfulness"][key] == pytest.approx(y["faithfulness"][key], abs=1e-5)


def test_batched_equals_one_at_a_time(tiny, cqa_examples, tmp_path):
    kw = dict(task="cqa", method="saliency", top_k=3, max_new_tokens=3)
    extract(tiny, cqa_examples, tmp_path / "b", batch_size=4, **kw)
    extract(tiny, cqa_examples, tmp_path / "s", batch_size=1, **kw)
    batched = read_jsonl(tmp_path / "b" / RATIONALES)
    single = read_jsonl(tmp_path / "s" / RATIONALES)
    assert len(batched) == len(cqa_examples)
    _close_records(batched, single)
    rec = batched[0]
    assert rec["label"] in rec["options"] and isinstance(rec["teacher_correct"], bool)
    assert len(rec["rationale"]) == 3 and rec["top_k"] == 3
    assert set(rec["faithfulness"]) >= {"comprehensiveness", "sufficiency"}


def test_gold_target_attributes_the_label(cqa_examples, tmp_path):
    import tiny

    loaded = tiny.loaded("llama")
    summary = extract(
        loaded,
        cqa_examples[:2],
        tmp_path / "g",
        task="cqa",
        target="gold",
        with_faithfulness=False,
        top_k=2,
    )
    recs = read_jsonl(tmp_path / "g" / RATIONALES)
    assert [r["teacher_answer"] for r in recs] == [ex.label for ex in cqa_examples[:2]]
    assert all(r["teacher_correct"] is None for r in recs)  # not measured with a gold target
    assert summary["teacher_accuracy"] is None


def test_kill_and_resume_neither_duplicates_nor_loses(cqa_examples, tmp_path):
    import tiny

    loaded = tiny.loaded("llama")
    kw = dict(task="cqa", top_k=3, max_new_tokens=3, batch_size=2)
    extract(loaded, cqa_examples, tmp_path / "full", **kw)
    stop = threading.Event()
    seen = []

    def progress(p):  # "kill" after the first batch
        seen.append(p["done"])
        stop.set()

    first = extract(loaded, cqa_examples, tmp_path / "run", progress=progress, stop=stop, **kw)
    assert first["status"] == "stopped" and first["done"] == 2
    assert not (tmp_path / "run" / "summary.json").exists()
    # a torn last line, as a kill mid-write would leave
    part = next((tmp_path / "run" / "parts").glob("*.jsonl"))
    with part.open("a") as f:
        f.write('{"id": "torn')
    summary = extract(loaded, cqa_examples, tmp_path / "run", **kw)
    assert summary["n"] == len(cqa_examples)
    resumed = read_jsonl(tmp_path / "run" / RATIONALES)
    assert len({r["id"] for r in resumed}) == len(resumed) == len(cqa_examples)
    _close_records(resumed, read_jsonl(tmp_path / "full" / RATIONALES))


def test_finished_extraction_is_cached(cqa_examples, tmp_path):
    import tiny

    loaded = tiny.loaded("llama")
    kw = dict(
        task="cqa", top_k=2, max_new_tokens=2, with_faithfulness=False, config={"data_hash": "abc"}
    )
    extract(loaded, cqa_examples[:2], tmp_path / "c", **kw)
    before = (tmp_path / "c" / RATIONALES).read_text()
    again = extract(loaded, cqa_examples[:2], tmp_path / "c", **kw)
    assert again["cached"] is True
    assert (tmp_path / "c" / RATIONALES).read_text() == before
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["teacher"] == "tiny-llama" and cfg["method"] == "saliency" and cfg["top_k"] == 2
