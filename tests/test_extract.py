"""Dataset-level extraction: batched equals one at a time, kill and resume, caching."""

import dataclasses
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


def test_same_count_other_examples_is_never_cached(cqa_examples, tmp_path):
    """Defect 1: the old key (teacher, method, k, target, data hash, count) called a rerun
    with other examples of the same count 'cached' and returned the old rationales."""
    import tiny

    from distill.runs import RunError

    loaded = tiny.loaded("llama")
    kw = dict(task="cqa", top_k=2, max_new_tokens=2, with_faithfulness=False)
    kw["config"] = {"data_hash": "same-file"}
    extract(loaded, cqa_examples[:2], tmp_path / "c", **kw)
    before = (tmp_path / "c" / RATIONALES).read_text()
    with pytest.raises(RunError, match="other settings.*examples_sha256"):
        extract(loaded, cqa_examples[2:4], tmp_path / "c", **kw)
    assert (tmp_path / "c" / RATIONALES).read_text() == before  # nothing overwritten
    # Same examples, same count, other content (an edited question): refused as well.
    edited = [dataclasses.replace(e, fields=dict(e.fields)) for e in cqa_examples[:2]]
    edited[0].fields["question"] += " Really?"
    with pytest.raises(RunError, match="examples_sha256"):
        extract(loaded, edited, tmp_path / "c", **kw)
    # Other teacher weights under the same spec, or another max_new_tokens: refused.
    with pytest.raises(RunError, match="teacher_fingerprint"):
        extract(tiny.loaded("llama", seed=1), cqa_examples[:2], tmp_path / "c", **kw)
    with pytest.raises(RunError, match="max_new_tokens"):
        extract(loaded, cqa_examples[:2], tmp_path / "c", **dict(kw, max_new_tokens=3))
    with pytest.raises(RunError, match="explain_settings"):
        extract(loaded, cqa_examples[:2], tmp_path / "c", explain_settings={"how": "sum"}, **kw)
    assert extract(loaded, cqa_examples[:2], tmp_path / "c", **kw)["cached"] is True


def test_cache_key_covers_every_output_setting(cqa_examples):
    import tiny

    from distill.extract import cache_key, examples_hash, model_fingerprint

    base = {"teacher": "t", "method": "saliency", "top_k": 2, "rows": "answer", "seed": 0}
    keys = {cache_key(base)}
    changes = [
        {"rows": "tokens"},
        {"seed": 1},
        {"chat_template": False},
        {"method_settings": {"n_steps": 8}},
        {"explain_settings": {"how": "max"}},
    ]
    for change in changes:
        keys.add(cache_key(base | change))
    assert len(keys) == 6
    assert examples_hash(cqa_examples[:2]) != examples_hash(cqa_examples[1:3])
    assert examples_hash(cqa_examples[:2]) == examples_hash(list(cqa_examples[:2]))
    a, b = tiny.loaded("llama", 0), tiny.loaded("llama", 1)
    assert model_fingerprint(a) == model_fingerprint(tiny.loaded("llama", 0))
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"top_k": 0}, "top-k"),
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": -2}, "batch size"),
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"method": "magic"}, "unknown method"),
        ({"target": "label"}, "target"),
        ({"rows": "all"}, "rows"),
        ({"examples": []}, "no examples"),
    ],
)
def test_bad_settings_leave_no_folder(cqa_examples, tmp_path, bad, msg):
    """Issue 9: a failed start must not leave a (finished, n=0) run folder behind."""
    import tiny

    from distill.extract import ExtractError

    kw = dict(task="cqa", top_k=2, max_new_tokens=2, with_faithfulness=False)
    examples = bad.pop("examples", cqa_examples[:2])
    with pytest.raises(ExtractError, match=msg):
        extract(tiny.loaded("llama"), examples, tmp_path / "run", **(kw | bad))
    assert not (tmp_path / "run").exists()


def test_records_carry_the_target(cqa_examples, tmp_path):
    import tiny

    from distill.rationales import RationaleError, check_hint_source, read_meta

    loaded = tiny.loaded("llama")
    kw = dict(task="cqa", top_k=2, max_new_tokens=2, with_faithfulness=False)
    extract(loaded, cqa_examples[:2], tmp_path / "gold", target="gold", **kw)
    extract(loaded, cqa_examples[:2], tmp_path / "gen", **kw)
    assert {r["target"] for r in read_jsonl(tmp_path / "gold" / RATIONALES)} == {"gold"}
    assert {r["target"] for r in read_jsonl(tmp_path / "gen" / RATIONALES)} == {"generated"}
    assert check_hint_source(tmp_path / "gen").target == "generated"
    with pytest.raises(RationaleError, match="gold label as target"):
        check_hint_source(read_meta(tmp_path / "gold"))


def test_resume_after_a_kill_inside_a_batch_is_identical(cqa_examples, tmp_path):
    """Issue 9: batches regrouped around the done ids on resume, so records differed from an
    uninterrupted run (up to 5e-5). Batches now follow the example order: identical records."""
    import tiny

    loaded = tiny.loaded("llama")
    kw = dict(task="cqa", top_k=3, max_new_tokens=3, batch_size=3, with_faithfulness=False)
    extract(loaded, cqa_examples, tmp_path / "full", **kw)
    stop = threading.Event()
    extract(loaded, cqa_examples, tmp_path / "run", progress=lambda p: stop.set(), stop=stop, **kw)
    part = next((tmp_path / "run" / "parts").glob("*.jsonl"))
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:2]))  # killed after 2 of the batch's 3 records
    extract(loaded, cqa_examples, tmp_path / "run", **kw)
    full = _strip(read_jsonl(tmp_path / "full" / RATIONALES))
    resumed = _strip(read_jsonl(tmp_path / "run" / RATIONALES))
    assert resumed == full  # exact: same batches, same numbers


def test_batches_group_inputs_of_similar_length(cqa_examples, tmp_path, monkeypatch):
    """Extraction batches are runs of the examples sorted by input length (less padding);
    the records keep the data's order."""
    import tiny

    import distill.extract as ex

    seen = []
    real = ex.explain_batch

    def spy(loaded, items, *a, **k):
        seen.append([ex._input_chars(type("E", (), {"fields": f})) for f in items])
        return real(loaded, items, *a, **k)

    monkeypatch.setattr(ex, "explain_batch", spy)
    kw = dict(task="cqa", top_k=3, max_new_tokens=3, batch_size=2, with_faithfulness=False)
    extract(tiny.loaded("llama"), cqa_examples, tmp_path / "run", **kw)
    flat = [n for b in seen for n in b]
    assert flat == sorted(ex._input_chars(e) for e in cqa_examples)
    assert [len(b) for b in seen] == [2, 2, 2]
    records = read_jsonl(tmp_path / "run" / RATIONALES)
    assert [r["id"] for r in records] == [e.id for e in cqa_examples]
