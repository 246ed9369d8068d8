"""Exports (JSON, CSV, standalone HTML) and the shipped examples file."""

from __future__ import annotations

import html
import io
import json
from collections import Counter

import pandas as pd
import pytest
import tiny

from explain import export, figures
from explain.examples import ExamplesError, fields, load_examples
from explain.pipeline import explain
from explain.result import AttributionResult
from explain.templates import get_template


@pytest.fixture(scope="module", params=["llama", "t5"])
def result(request) -> AttributionResult:
    fields_ = {
        "premise": "A man plays a <b>guitar</b> & sings.",
        "hypothesis": "A person performs music.",
    }
    return explain(
        tiny.loaded(request.param),
        fields_,
        template="nli",
        method="input_x_gradient",
        top_k=3,
        max_new_tokens=3,
    )


# ----------------------------------------------------------------------------- exports


def test_json_round_trips(result):
    text = export.to_json(result)
    assert text == result.to_json(indent=2)
    back = AttributionResult.from_dict(json.loads(text))
    assert back == result


def test_csv_round_trips_scores_and_matrix(result):
    df = pd.read_csv(
        io.StringIO(export.to_csv(result)), dtype={"token": str, "word": str}, keep_default_na=False
    )
    assert len(df) == len(result.input_tokens)
    assert list(df.columns[:8]) == [
        "index",
        "token",
        "start",
        "end",
        "is_special",
        "is_input",
        "word",
        "token_score",
    ]
    assert df["index"].tolist() == list(range(len(result.input_tokens)))
    assert df["token"].tolist() == result.input_tokens
    assert df["token_score"].tolist() == result.token_scores  # exact: floats written by repr
    outs = [c for c in df.columns if c.startswith("out_")]
    assert len(outs) == len(result.output_tokens)
    assert all(c.startswith(f"out_{i}:") for i, c in enumerate(outs))
    for i, c in enumerate(outs):
        assert df[c].tolist() == result.matrix[i]
    inputs = set(figures.input_token_columns(result))
    assert df["is_input"].tolist() == [i in inputs for i in range(len(df))]
    assert df["is_special"].tolist() == [o is None for o in result.input_offsets]
    starts = [o[0] if o else "" for o in result.input_offsets]
    assert [("" if s == "" else int(s)) for s in df["start"].astype(str)] == starts


def test_html_report_is_standalone(result, tmp_path):
    paths = export.write_exports(result, tmp_path / "out", "run 1/../x")
    assert set(paths) == {"json", "csv", "html"}
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temp files left behind
    page = paths["html"].read_text(encoding="utf-8")
    assert page == export.to_html(result)
    assert page.startswith("<!DOCTYPE html>")
    assert html.escape(result.answer) in page
    assert 'class="plotly-graph-div"' in page
    assert "<script src=" not in page and 'src="http' not in page  # works offline
    # the input's markup is escaped (a rationale chip may still bold the word "guitar" itself)
    assert "a <b>guitar</b>" not in page and "&lt;b&gt;guitar&lt;/b&gt;" in page
    assert 'class="kd-highlight"' in page and 'class="kd-settings"' in page
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == result.to_dict()
    assert paths["csv"].read_text(encoding="utf-8") == export.to_csv(result)


def test_write_exports_overwrites_atomically(result, tmp_path):
    first = export.write_exports(result, tmp_path, "r")
    again = export.write_exports(result.for_output(0), tmp_path, "r")
    assert first == again
    assert json.loads(again["json"].read_text())["settings"]["output_token"] == 0
    assert len(list(tmp_path.iterdir())) == 3


# ----------------------------------------------------------------------------- examples


def test_shipped_examples_validate():
    ex = load_examples()
    assert len(ex) >= 24
    by = Counter(r["template"] for r in ex)
    assert by["cqa"] >= 14 and by["nli"] >= 10
    assert len({r["id"] for r in ex}) == len(ex)
    for r in ex:
        t = get_template(r["template"])
        t.render(fields(r))  # every example runs through its template
        assert r["answer"] in t.answer_options(fields(r))
        if r["template"] == "cqa":
            assert len(r["choices"]) == 5 and len(set(r["choices"])) == 5
    labels = Counter(r["answer"] for r in ex if r["template"] == "nli")
    assert set(labels) == {"entailment", "neutral", "contradiction"}
    assert max(labels.values()) - min(labels.values()) <= 1
    positions = Counter(r["choices"].index(r["answer"]) for r in ex if r["template"] == "cqa")
    assert set(positions) == set(range(5))  # the gold answer is not always in one slot


def _write(tmp_path, data) -> str:
    p = tmp_path / "ex.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(p)


GOOD = {
    "template": "nli",
    "premise": "A cat sleeps.",
    "hypothesis": "An animal rests.",
    "answer": "entailment",
}


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"template": "cqa", "question": "Q?", "choices": ["a", "b"], "answer": "c"}, "not one of"),
        ({"template": "nli", "premise": "P.", "answer": "neutral"}, "hypothesis"),
        ({"template": "nli", "premise": "P.", "hypothesis": "H.", "answer": "maybe"}, "not one of"),
        ({"template": "cqa", "question": "Q?", "choices": ["a", "a"], "answer": "a"}, "repeat"),
        ({"template": "nope", "answer": "x"}, "unknown template"),
        ("just a string", "not a JSON object"),
    ],
)
def test_broken_examples_name_the_record(tmp_path, bad, why):
    path = _write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(ExamplesError, match=rf"record 2: .*{why}"):
        load_examples(path)


def test_broken_examples_file(tmp_path):
    with pytest.raises(ExamplesError, match="not valid JSON"):
        load_examples(_write(tmp_path, "[{"))
    with pytest.raises(ExamplesError, match="JSON list"):
        load_examples(_write(tmp_path, {"a": 1}))
    with pytest.raises(ExamplesError, match="cannot read"):
        load_examples(tmp_path / "missing.json")
    assert load_examples(_write(tmp_path, [GOOD])) == [GOOD]
