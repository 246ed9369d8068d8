import json
import random

import pytest

from distill.data import DataError
from distill.overlap import (
    DEFINITIONS,
    average_precision,
    load_rationales,
    norm_word,
    overlap_report,
    precision_recall,
    random_k_indices,
    token_f1,
)


def word(text, score, is_input=True, is_punct=False):
    return {"text": text, "start": 0, "end": 0, "score": score, "is_input": is_input,
            "is_punct": is_punct}  # fmt: skip


def bum_record(**extra):
    # Input words (non-punct) and their human-rationale labels:
    #   where .1 (0), does .05 (0), a .2 (1), bum .9 (1), live .8 (0), train .3 (1), station .7 (1)
    words = [
        word("Question", 9.0, is_input=False),
        word("Where", 0.1),
        word("does", 0.05),
        word("a", 0.2),
        word("bum", 0.9),
        word("live", 0.8),
        word("?", 5.0, is_punct=True),
        word("train", 0.3),
        word("station", 0.7),
    ]
    rec = {
        "id": "bum",
        "task": "cqa",
        "label": "train station",
        "options": ["bridge", "train station"],
        "human_rationale": "a bum lives near the train station",
        "teacher_answer": "train station",
        "teacher_correct": True,
        "rationale": [word("bum", 0.9), word("live", 0.8), word("station", 0.7)],
        "words": words,
        "top_k": 3,
    }
    return rec | extra


def test_hand_computed_example():
    (row,) = overlap_report([bum_record()], n_random=3).per_example
    assert row["rationale"] == ["bum", "live", "station"] and row["gold"] == "train station"
    # gold words {train, station}; rationale {bum, live, station}; common {station}
    assert row["hit"] is True
    assert row["precision"] == pytest.approx(1 / 3)
    assert row["recall"] == pytest.approx(1 / 2)
    # human words: a bum lives near the train station (7); common with rationale: bum, station
    # P = 2/3, R = 2/7, F1 = 2PR / (P + R) = (8/21) / (20/21) = 0.4
    assert row["human_f1"] == pytest.approx(0.4)
    # ranked: bum+ live- station+ train+ a+ where- does-; AP = (1 + 2/3 + 3/4 + 4/5) / 4
    assert row["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert row["teacher_correct"] is True


def test_no_hit_and_stopwords():
    rationale = [word("Where", 0.1), word("the", 0.1), word("bum", 0.9)]
    rec = bum_record(rationale=rationale, label="the bridge")
    (row,) = overlap_report([rec], n_random=1).per_example
    assert row["hit"] is True  # "the" is a word of "the bridge"
    assert row["precision"] == pytest.approx(1 / 3) and row["recall"] == 0.5
    (row,) = overlap_report([rec], n_random=1, drop_stopwords=True).per_example
    assert row["hit"] is False and row["precision"] == 0.0 and row["recall"] == 0.0  # bum/bridge
    only_stop = bum_record(rationale=[word("Where", 0.1)], label="bridge")
    (row,) = overlap_report([only_stop], drop_stopwords=True).per_example
    assert row["precision"] is None  # no content words left: undefined, left out of means


def test_random_k_with_all_candidates_is_exact():
    # k = all 7 candidates: every draw picks every word, so the baseline is exact
    rec = bum_record(
        rationale=[word(t, 0.0) for t in "Where does a bum live train station".split()]
    )
    (row,) = overlap_report([rec], n_random=4).per_example
    assert row["random_hit"] == 1.0
    assert row["random_precision"] == pytest.approx(2 / 7)
    assert row["random_recall"] == 1.0
    assert row["random_precision"] == row["precision"]


def test_random_k_seeded_reproducible():
    recs = [bum_record(), bum_record(id="other")]
    a = overlap_report(recs, seed=7).to_dict()
    b = overlap_report(recs, seed=7).to_dict()
    assert a == b
    # per-example seeding: an example's baseline does not depend on the other records
    solo = overlap_report([recs[1]], seed=7).per_example[0]
    assert solo == a["per_example"][1]
    assert random_k_indices(10, 3, random.Random(1)) == random_k_indices(10, 3, random.Random(1))
    idx = random_k_indices(10, 3, random.Random(2))
    assert len(set(idx)) == 3 and idx == sorted(idx) and all(0 <= i < 10 for i in idx)
    assert random_k_indices(2, 5, random.Random(0)) == [0, 1]
    draws = {tuple(random_k_indices(10, 3, random.Random(s))) for s in range(20)}
    assert len(draws) > 10


def test_random_figures_in_range():
    (row,) = overlap_report([bum_record()], n_random=50).per_example
    for name in ("hit", "precision", "recall", "human_f1", "auprc"):
        assert 0.0 <= row[f"random_{name}"] <= 1.0
    # random AUPRC hovers around the positive share (4 of 7)
    assert 0.4 < row["random_auprc"] < 0.85


def test_average_precision_hand_cases():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # ties form one threshold: {1, 1} -> recall 1/2 at precision 1/2; then 0 -> 1 at 2/3
    assert average_precision([1, 1, 0], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0.3, 0.2], [1, 1]) == 1.0
    assert average_precision([0.3, 0.2], [0, 0]) is None


def test_small_functions():
    assert precision_recall(["a", "b"], ["b", "c", "d"]) == (0.5, 1 / 3)
    assert precision_recall([], ["b"]) == (None, 0.0)
    assert token_f1(["x"], ["y"]) == 0.0 and token_f1(["x"], []) is None
    assert token_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert (
        norm_word("Station,") == "station"
        and norm_word("84.0") == "84"
        and norm_word("St.") == "st"
    )


def test_equation_gold_matches_numbers():
    rec = bum_record(label="( 84.0 / 2.0 )", rationale=[word("84", 1.0), word("rounds", 0.5)])
    (row,) = overlap_report([rec], n_random=1).per_example
    assert row["hit"] is True and row["recall"] == 0.5  # gold words {84, 2}


def test_summary_and_faithfulness():
    faith = {"comprehensiveness": 0.4, "sufficiency": 0.1,
             "random_comprehensiveness": 0.1, "random_sufficiency": 0.3}  # fmt: skip
    miss = bum_record(id="miss", rationale=[word("Where", 0.1)], teacher_correct=False)
    rep = overlap_report([bum_record(faithfulness=faith), miss], n_random=2)
    s = rep.summary
    assert s["n_examples"] == 2
    assert s["hit"]["rationale"] == 0.5 and s["hit"]["n"] == 2
    assert s["precision"]["rationale"] == pytest.approx((1 / 3 + 0) / 2)
    assert s["comprehensiveness"] == {"rationale": 0.4, "random": 0.1, "n": 1}
    assert s["sufficiency"] == {"rationale": 0.1, "random": 0.3, "n": 1}
    assert s["teacher_accuracy"] == 0.5
    assert "comprehensiveness" not in overlap_report([miss]).summary
    assert set(DEFINITIONS) >= {"hit", "precision", "recall", "human_f1", "auprc", "random"}
    assert rep.to_dict()["definitions"] == DEFINITIONS
    json.dumps(rep.to_dict())
    df = rep.to_dataframe()
    assert list(df["id"]) == ["bum", "miss"] and df.loc[0, "rationale"] == "bum live station"
    assert {"hit", "random_hit", "auprc", "random_auprc"} <= set(df.columns)


def test_missing_words_and_human_rationale():
    rec = {"id": "x", "label": "bridge", "rationale": [{"text": "bridge"}], "human_rationale": None}
    (row,) = overlap_report([rec]).per_example
    assert row["hit"] is True and row["human_f1"] is None and row["auprc"] is None
    assert row["random_hit"] is None
    assert overlap_report([rec]).summary["auprc"] == {"rationale": None, "random": None, "n": 0}


def test_load_rationales(tmp_path):
    good = json.dumps(bum_record())
    (tmp_path / "rationales.jsonl").write_text(good + "\n\n" + good + "\n")
    assert [r["id"] for r in load_rationales(tmp_path)] == ["bum", "bum"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n{oops\n")
    with pytest.raises(DataError, match="bad.jsonl line 2: malformed JSON"):
        load_rationales(bad)
    bad.write_text(good + "\n" + json.dumps({"id": "x", "label": "y"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl line 2: field 'rationale': missing"):
        load_rationales(bad)
    bad.write_text(json.dumps(bum_record(words=[{"text": "a"}])) + "\n")
    with pytest.raises(DataError, match="line 1: field 'words': each entry needs a numeric"):
        load_rationales(bad)
    with pytest.raises(DataError, match="not found"):
        load_rationales(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# The one rationale reader (distill/rationales.py)


def test_rationale_reader_one_definition(tmp_path):
    from distill import rationales as R

    f = tmp_path / "rationales.jsonl"
    rec = {"id": "a", "rationale": [{"text": "plate", "score": 1}, {"text": " "}], "target": "gold"}
    f.write_text(json.dumps(rec) + "\n" + json.dumps({"id": 7, "rationale": ["x"]}) + "\n"
                 + '{"id": "torn", "ra')  # fmt: skip
    assert R.rationale_map(tmp_path) == {"a": ["plate"], "7": ["x"]}  # torn last line skipped
    assert [r["id"] for r in R.read_records(f)] == ["a", 7]
    # A bad last line that ends with its newline was written whole: an error, with its line.
    f.write_text(json.dumps(rec) + "\n{oops\n")
    with pytest.raises(R.RationaleError, match="rationales.jsonl line 2: malformed JSON"):
        R.rationale_map(f)
    f.write_text(json.dumps({"id": "a", "rationale": "plate"}) + "\n")
    with pytest.raises(R.RationaleError, match="line 1: field 'rationale': expected a list"):
        R.read_records(f)
    f.write_text(json.dumps({"id": ["a"], "rationale": []}) + "\n")
    with pytest.raises(R.RationaleError, match="line 1: field 'id'"):
        R.read_records(f)
    f.write_text(json.dumps(rec) + "\n" + json.dumps(dict(rec, rationale=["sink"])) + "\n")
    with pytest.raises(R.RationaleError, match="id 'a' appears twice"):
        R.rationale_map(f)
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n")  # a UTF-8 BOM is fine
    assert R.rationale_map(f) == {"a": ["plate"]}
    f.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(R.RationaleError, match="not UTF-8"):
        R.read_records(f)
    with pytest.raises(R.RationaleError, match="no rationales at"):
        R.rationale_map(tmp_path / "missing")
    assert issubclass(R.RationaleError, DataError)  # callers catching DataError still work


def test_rationale_meta_and_hint_source(tmp_path):
    from distill import rationales as R

    run = tmp_path / "run"
    run.mkdir()
    (run / "rationales.jsonl").write_text(json.dumps({"id": "a", "rationale": ["x"]}) + "\n")
    (run / "config.json").write_text(json.dumps({"target": "gold", "teacher": "t", "top_k": 3}))
    meta = R.read_meta(run)
    assert (meta.target, meta.teacher, meta.top_k) == ("gold", "t", 3)
    with pytest.raises(R.RationaleError, match="gold label as target.*--target generated"):
        R.check_hint_source(run)
    assert R.check_hint_source(run, allow_gold=True).target == "gold"  # analysis only
    (run / "config.json").write_text(json.dumps({"target": "generated"}))
    assert R.check_hint_source(run).target == "generated"
    # A bare file without a config: the records' own target, "given" counting as gold.
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": "a", "rationale": ["x"], "target": "given"}) + "\n")
    assert R.read_meta(bare).target == "gold"
    bare.write_text(json.dumps({"id": "a", "rationale": ["x"]}) + "\n")
    with pytest.raises(R.RationaleError, match="unknown target"):
        R.check_hint_source(bare)
    assert R.target_label("gold") == "gold (analysis only)"
