"""Hugging Face ``datasets`` sources, offline: Parquet fixtures laid out like the hub datasets
(same columns, features and label codes), read through ``datasets`` itself."""

import json
import warnings

import pytest

datasets = pytest.importorskip("datasets", reason="pip install datasets pyarrow (requirements.txt)")

from distill import hf_data  # noqa: E402
from distill.data import DataError, data_hash, default_path, load_task  # noqa: E402
from distill.datasets import SAMPLE_DATASETS  # noqa: E402

NLI = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
N = 6


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    # Keep the Arrow cache that load_dataset writes inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    hf_data._load.cache_clear()


def sample(task):
    """The first N step-by-step records of the bundled sample, and their Examples."""
    path = default_path(task, SAMPLE_DATASETS)
    recs = [json.loads(ln) for ln in path.read_text().splitlines()[:N]]
    return recs, load_task(task, path, limit=N)


def to_parquet(rows, features, path):
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    ds.to_parquet(str(path))
    return path


def commonsense_qa_rows(recs):
    letters = "ABCDE"
    return [{"id": r["id"], "question": r["question"], "question_concept": "x",
             "choices": {"label": list(letters), "text": r["choices"]},
             "answerKey": letters[r["choices"].index(r["answer"])]} for r in recs]  # fmt: skip


CQA_FEATURES = {
    "id": datasets.Value("string"),
    "question": datasets.Value("string"),
    "question_concept": datasets.Value("string"),
    "choices": datasets.Sequence(
        {"label": datasets.Value("string"), "text": datasets.Value("string")}
    ),
    "answerKey": datasets.Value("string"),
}
COSE_FEATURES = {
    "id": datasets.Value("string"),
    "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")),
    "answer": datasets.Value("string"),
    "abstractive_explanation": datasets.Value("string"),
    "extractive_explanation": datasets.Value("string"),
}
S = datasets.Value("string")


def same(a, b):
    """Examples agree on everything but the source-file line/index bookkeeping."""
    keys = ("id", "task", "fields", "label", "options", "human_rationale")
    assert [[getattr(e, k) for k in keys] for e in a] == [[getattr(e, k) for k in keys] for e in b]


def test_commonsense_qa_joined_with_cose(tmp_path):
    recs, want = sample("cqa")
    cqa = to_parquet(commonsense_qa_rows(recs), CQA_FEATURES, tmp_path / "commonsense_qa.parquet")
    cose_rows = [{k: r[k] for k in COSE_FEATURES} for r in reversed(recs)]  # other order: by id
    cose = to_parquet(cose_rows, COSE_FEATURES, tmp_path / "cos_e.parquet")
    got = hf_data.load_hf_task("cqa", cqa, rationales=cose)
    same(got, want)  # answer letter -> choice text, CoS-E extractive span as human rationale
    assert [e.index for e in got] == list(range(N)) and got[0].line == 1
    plain = load_task("cqa", cqa)  # dispatched by the .parquet suffix, no rationales joined
    assert [e.label for e in plain] == [e.label for e in want]
    assert all(e.human_rationale is None for e in plain)


def test_cose_layout_is_the_step_by_step_layout(tmp_path):
    recs, want = sample("cqa")
    cose = to_parquet([{k: r[k] for k in COSE_FEATURES} for r in recs], COSE_FEATURES,
                      tmp_path / "cose.parquet")  # fmt: skip
    same(load_task("cqa", f"hf:{cose}"), want)


@pytest.mark.parametrize("task", ["esnli", "anli1"])
def test_nli_hub_layouts(tmp_path, task):
    recs, want = sample(task)
    if task == "esnli":
        feats = {"premise": S, "hypothesis": S, "label": NLI,
                 "explanation_1": S, "explanation_2": S, "explanation_3": S}  # fmt: skip
    else:
        feats = {"uid": S, "premise": S, "hypothesis": S, "label": NLI, "reason": S}
    rows = [{k: r.get(k, "") for k in feats} for r in recs]
    path = to_parquet(rows, feats, tmp_path / f"{task}.parquet")
    got = load_task(task, path, limit=4)
    same(got, want[:4])
    assert {e.label for e in load_task(task, path)} <= {"entailment", "neutral", "contradiction"}


def test_svamp_hub_layout(tmp_path):
    recs, want = sample("svamp")
    feats = {"ID": S, "Body": S, "Question": S, "Equation": S,
             "Answer": datasets.Value("float64"), "Type": S, "question_concat": S}  # fmt: skip
    rows = []
    for i, r in enumerate(recs):
        body, question = r["input"].rsplit("\n", 1)
        rows.append({"ID": f"chal-{i}", "Body": body, "Question": question,
                     "Equation": r["label"], "Answer": 1.0, "Type": "x",
                     "question_concat": f"{body} {question}"})  # fmt: skip
    got = load_task("svamp", to_parquet(rows, feats, tmp_path / "svamp.parquet"))
    assert [e.fields for e in got] == [e.fields for e in want]
    assert [e.label for e in got] == [e.label for e in want]
    assert [e.id for e in got] == [f"chal-{i}" for i in range(N)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_local_files_through_datasets(tmp_path, suffix):
    recs, want = sample("esnli")
    path = tmp_path / f"e{suffix}"
    datasets.Dataset.from_list(recs).to_json(str(path)) if suffix == ".jsonl" else (
        datasets.Dataset.from_list(recs).to_csv(str(path), index=False))  # fmt: skip
    same(load_task("esnli", f"hf:{path}"), want)
    assert len(data_hash(f"hf:{path}")) > 8  # run configs record a fingerprint


def test_bad_rows_give_located_one_line_errors(tmp_path):
    recs, _ = sample("cqa")
    rows = commonsense_qa_rows(recs[:3])
    rows[1]["answerKey"] = ""  # what the hub's unlabelled test split holds
    path = to_parquet(rows, CQA_FEATURES, tmp_path / "cqa_test.parquet")
    with pytest.raises(DataError, match=r"^cqa_test.parquet line 2: field 'answerKey': empty "
                                        r"\(the hub's test split has no gold answers"):  # fmt: skip
        load_task("cqa", path)
    feats = {"premise": S, "hypothesis": S, "label": datasets.Value("int64")}
    bad = to_parquet([{"premise": "a", "hypothesis": "b", "label": 1},
                      {"premise": "a", "hypothesis": "b", "label": 7}], feats,
                     tmp_path / "nli.parquet")  # fmt: skip
    with pytest.raises(
        DataError, match=r"^nli.parquet line 2: field 'label': 7 is not one of 0..2"
    ):
        load_task("esnli", bad)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"^junk.parquet: cannot be read \("):
        load_task("esnli", junk)
    with pytest.raises(DataError, match="data file not found"):
        load_task("esnli", tmp_path / "none.parquet")


def test_sources_parse():
    p = hf_data.parse_source
    assert p("hf:facebook/anli") == hf_data.Source("hf:facebook/anli", "facebook/anli", False,
                                                   None, "dev_r1")  # fmt: skip
    assert p("hf:facebook/anli:test_r1").split == "test_r1"
    assert (p("hf:cos_e").config, p("hf:cos_e").split) == ("v1.11", "train")
    assert (p("hf:x/y:c:validation").config, p("hf:x/y:c:validation").split) == ("c", "validation")
    assert p("hf:data/my.jsonl").local and p("x.parquet").local
    assert hf_data.is_hf_source("hf:esnli") and hf_data.is_hf_source("a/b.PARQUET")
    assert not hf_data.is_hf_source("a/b.jsonl")
    for bad in ("hf:", "hf:a::b", "hf:a:b:c:d"):
        with pytest.raises(DataError, match="hf:"):
            p(bad)


def test_hub_unreachable_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a real refusal
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub to load 'esnli'; "
                                        r"download the data and pass a local"):  # fmt: skip
        load_task("esnli", "hf:esnli:validation")


def test_hub_id_for_another_task_is_refused():
    with pytest.raises(DataError, match="esnli holds task 'esnli', not 'svamp'"):
        load_task("svamp", "hf:esnli")


def test_default_cose_join_failure_only_warns(tmp_path, monkeypatch):
    """A hub CommonsenseQA whose CoS-E join cannot load still loads, with a warning."""
    recs, want = sample("cqa")
    path = to_parquet(commonsense_qa_rows(recs), CQA_FEATURES, tmp_path / "c.parquet")
    missing = tmp_path / "missing.parquet"
    monkeypatch.setitem(
        hf_data.HUB, str(path), hf_data.HubDataset("cqa", "train", rationales=f"hf:{missing}")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = hf_data.load_hf_task("cqa", path)
    assert [e.label for e in got] == [e.label for e in want]
    assert any("no CoS-E human rationales" in str(w.message) for w in caught)
    with pytest.raises(DataError, match="data file not found: .*missing.parquet"):
        hf_data.load_hf_task("cqa", path, rationales=missing)  # asked for: an error
