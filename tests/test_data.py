import hashlib
import json

import pytest

from distill.data import (
    DataError,
    Example,
    attach_llm_rationales,
    data_hash,
    default_path,
    load_llm_rationales,
    load_task,
    parse_llm_rationale,
    split,
    split_svamp,
)
from distill.tasks import TASKS
from explain.templates import get_template

CQA_OK = {
    "id": "q1",
    "question": "Where does a bum live?",
    "choices": ["bus depot", "beach", "train station", "bridge", "park"],
    "answer": "bridge",
    "extractive_explanation": "a bum",
}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- real files ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["cqa", "esnli", "anli1", "svamp"])
def test_real_files_load_and_render(datasets_dir, task):
    examples = load_task(task, default_path(task, datasets_dir), limit=50)
    assert len(examples) == 50
    assert [e.index for e in examples] == list(range(50))
    assert [e.line for e in examples] == list(range(1, 51))
    assert len({e.id for e in examples}) == 50
    spec = TASKS[task]
    for e in examples:
        prompt = get_template(spec.template).render(e.fields)
        assert prompt.input_spans
        if spec.label_kind == "choice":
            assert len(e.fields["choices"]) == 5 and e.label in e.options
        elif spec.label_kind == "nli":
            assert e.label in ("entailment", "neutral", "contradiction")
            assert e.options == ["entailment", "neutral", "contradiction"]
        else:
            assert e.options is None and e.fields["body"] and e.fields["question"]


def test_real_first_records(datasets_dir):
    cqa = load_task("cqa", datasets_dir / "cqa" / "cqa_train.json", limit=2)
    assert cqa[0].id == "6b819727eb8a670df26a7ffad036c119"
    assert cqa[0].label == "math problem"
    assert cqa[1].human_rationale == "a bum"
    anli = load_task("anli1", datasets_dir / "anli1" / "anli1_valid.json", limit=2)
    assert anli[0].id == "bf628cf5-6948-4595-a6d0-daf99beb47b9"
    assert anli[0].label == "contradiction" and anli[1].label == "entailment"
    assert anli[0].human_rationale.startswith("Linguistics involves")
    esnli = load_task("esnli", datasets_dir / "esnli" / "esnli_valid.json", limit=3)
    assert [e.label for e in esnli] == ["neutral", "entailment", "contradiction"]
    assert esnli[0].id == "esnli-1"
    assert esnli[0].human_rationale == "The to go packages may not be from lunch."
    svamp = load_task("svamp", datasets_dir / "svamp" / "svamp_train.json", limit=1)
    assert svamp[0].fields == {
        "body": "Luke scored 84 points after playing 2 rounds of a trivia game. "
        "If he gained the same number of points each round",
        "question": "How many points did he score per round?",
    }
    assert svamp[0].label == "( 84.0 / 2.0 )"


def test_real_llm_rationales(datasets_dir):
    raw = json.loads((datasets_dir / "cqa" / "llm" / "train_CoT_0.json").read_text())
    first = parse_llm_rationale(raw[0])
    assert first == (
        "The answer must be something that has to do with the above problem. "
        "Of the above choices, only math problem has to do with the above problem."
    )
    for text in raw[:200]:
        r = parse_llm_rationale(text)
        assert r and "So the answer is" not in r and "\nQ:" not in r and "\n\n" not in r
    examples = load_task("cqa", datasets_dir / "cqa" / "cqa_train.json", limit=3)
    rationales = load_llm_rationales(datasets_dir / "cqa", "train")
    # One rationale per record (9,741 in the full release over files 0..9, 200 in the sample).
    n_records = sum(1 for ln in (datasets_dir / "cqa" / "cqa_train.json").open() if ln.strip())
    assert len(rationales) == n_records
    attach_llm_rationales(examples, rationales)
    assert examples[0].llm_rationale == first
    assert examples[1].llm_rationale.startswith("The answer must be a place where a bum")


# --- the DSS parser on each task's answer style --------------------------------------------


PARSE_CASES = [
    # (raw PaLM output, rationale): CQA, SVAMP, e-SNLI, ANLI mid-sentence, no marker
    (
        "Bums live under bridges. So the answer is (d) bridge.\n\nQ: next",
        "Bums live under bridges.",
    ),
    ("84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are", "84 / 2 = 42."),
    ("Not from lunch.\nAnswer: neutral\n\nPremise: x", "Not from lunch."),
    ("He was born in 1995, so the answer is contradiction.\n\nPremise:", "He was born in 1995"),
    ("  No marker here.\nStill it.\n\nQ: unrelated few-shot text", "No marker here.\nStill it."),
]


@pytest.mark.parametrize("raw, want", PARSE_CASES)
def test_parse_llm_rationale(raw, want):
    assert parse_llm_rationale(raw) == want


def test_llm_files_numeric_order_and_gaps(tmp_path):
    (tmp_path / "llm").mkdir()
    for i in range(11):
        (tmp_path / "llm" / f"train_CoT_{i}.json").write_text(
            json.dumps([f"r{i}. So the answer is x"])
        )
    assert load_llm_rationales(tmp_path, "train") == [f"r{i}." for i in range(11)]
    assert load_llm_rationales(tmp_path, "train", raw=True)[0] == "r0. So the answer is x"
    (tmp_path / "llm" / "train_CoT_3.json").unlink()
    with pytest.raises(DataError, match="train_CoT_3.json is missing"):
        load_llm_rationales(tmp_path, "train")
    with pytest.raises(DataError, match="no LLM rationale files"):
        load_llm_rationales(tmp_path, "valid")


def test_attach_by_record_index(tmp_path):
    f = write_lines(tmp_path / "c.json", [json.dumps(dict(CQA_OK, id=f"q{i}")) for i in range(4)])
    train, dev = split(load_task("cqa", f), dev_size=2, seed=1)
    attach_llm_rationales(dev, ["r0", "r1", "r2", "r3"])
    assert [e.llm_rationale for e in dev] == [f"r{e.index}" for e in dev]
    with pytest.raises(DataError, match="cover 2 records"):
        attach_llm_rationales(load_task("cqa", f), ["r0", "r1"])


# --- broken files ----------------------------------------------------------------------------


def test_malformed_json_names_file_and_line(tmp_path):
    f = write_lines(
        tmp_path / "cqa_train.json", [json.dumps(CQA_OK), "", '{"id": "x", "question": ']
    )
    with pytest.raises(DataError, match=r"^cqa_train.json line 3: malformed JSON"):
        load_task("cqa", f)


def test_not_an_object(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match="line 1: expected a JSON object, got list"):
        load_task("cqa", f)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"question": None}, "line 2: field 'question': missing"),
        ({"question": "  "}, "line 2: field 'question': empty"),
        ({"choices": 5}, "line 2: field 'choices': expected a list of texts, got int"),
        ({"choices": ["only one"]}, "field 'choices': expected 2 to 10 choices, got 1"),
        ({"answer": "foo"}, "line 2: field 'answer': 'foo' is not one of the choices"),
        ({"answer": 3}, "field 'answer': expected text, got int"),
    ],
)
def test_bad_cqa_records(tmp_path, change, message):
    bad = {k: v for k, v in dict(CQA_OK, **change).items() if v is not None}
    f = write_lines(tmp_path / "cqa_train.json", [json.dumps(CQA_OK), json.dumps(bad)])
    with pytest.raises(DataError) as err:
        load_task("cqa", f)
    assert str(err.value).startswith("cqa_train.json line 2: ")
    assert message in str(err.value)


@pytest.mark.parametrize("label", [3, -1, "maybe", True, None])
def test_bad_nli_label(tmp_path, label):
    rec = {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": label}
    f = write_lines(tmp_path / "anli.json", [json.dumps(rec)])
    with pytest.raises(DataError, match="anli.json line 1: field 'label'"):
        load_task("anli1", f)


def test_nli_label_forms(tmp_path):
    recs = [{"premise": "p", "hypothesis": "h", "label": v} for v in (0, "1", "Contradiction")]
    f = write_lines(tmp_path / "n.jsonl", [json.dumps(r) for r in recs])
    assert [e.label for e in load_task("esnli", f)] == ["entailment", "neutral", "contradiction"]


def test_empty_missing_unknown(tmp_path):
    empty = write_lines(tmp_path / "empty.json", ["", "   "])
    with pytest.raises(DataError, match="empty.json: no records"):
        load_task("cqa", empty)
    with pytest.raises(DataError, match="data file not found"):
        load_task("cqa", tmp_path / "nope.json")
    with pytest.raises(DataError, match="unknown task 'squad'; tasks: cqa, esnli, anli1, svamp"):
        load_task("squad", empty)


def test_ids_limit_and_letter_answer(tmp_path):
    rec = {k: v for k, v in CQA_OK.items() if k != "id"}
    f = write_lines(
        tmp_path / "c.jsonl", [json.dumps(rec), "", json.dumps(dict(rec, answer="(B)"))]
    )
    ex = load_task("cqa", f)
    assert [e.id for e in ex] == ["cqa-1", "cqa-3"]
    assert [e.label for e in ex] == ["bridge", "beach"]
    assert [e.index for e in ex] == [0, 1]
    assert len(load_task("cqa", f, limit=1)) == 1


def test_user_jsonl_with_mapping(tmp_path):
    rec = {"q": "Where?", "opts": ["here", "there"], "gold": "there", "why": "over there"}
    f = write_lines(tmp_path / "mine.jsonl", [json.dumps(rec)])
    m = {"question": "q", "choices": "opts", "answer": "gold", "human_rationale": "why"}
    (e,) = load_task("cqa", f, mapping=m)
    assert e.fields == {"question": "Where?", "choices": ["here", "there"]}
    assert (e.label, e.human_rationale, e.options) == ("there", "over there", ["here", "there"])
    with pytest.raises(DataError, match="mine.jsonl line 1: field 'options': missing"):
        load_task("cqa", f, mapping={"question": "q", "choices": "options", "answer": "gold"})
    with pytest.raises(DataError, match="field 'question': missing"):
        load_task("cqa", f)  # no mapping: our names, which the file lacks


def test_csv_with_mapping(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text(
        "q,opts,gold\n"
        "Where do fish live?,sea|desert|sky,sea\n"
        '"A question, with a comma?",red | blue,blue\n',
        encoding="utf-8",
    )
    m = {"question": "q", "choices": "opts", "answer": "gold"}
    ex = load_task("cqa", f, mapping=m)
    assert [e.fields["choices"] for e in ex] == [["sea", "desert", "sky"], ["red", "blue"]]
    assert [e.label for e in ex] == ["sea", "blue"]
    assert [e.line for e in ex] == [2, 3] and [e.id for e in ex] == ["cqa-2", "cqa-3"]
    f.write_text("q,opts,gold\nok?,a|b,a\nbad?,a|b,c\n", encoding="utf-8")
    with pytest.raises(DataError, match="mine.csv line 3: field 'gold': 'c' is not one of"):
        load_task("cqa", f, mapping=m)


def test_csv_nli_and_svamp(tmp_path):
    f = tmp_path / "nli.csv"
    f.write_text("premise,hypothesis,label\nA dog runs.,An animal moves.,0\n", encoding="utf-8")
    assert load_task("anli1", f)[0].label == "entailment"
    g = tmp_path / "math.csv"
    g.write_text('text,eq\n"Tom has 3 apples. He buys 2. How many now?",( 3.0 + 2.0 )\n')
    (e,) = load_task("svamp", g, mapping={"input": "text", "label": "eq"})
    assert e.fields == {"body": "Tom has 3 apples. He buys 2.", "question": "How many now?"}
    assert e.label == "( 3.0 + 2.0 )"


def test_split_svamp():
    assert split_svamp("Body text.\nQuestion?") == ("Body text.", "Question?")
    assert split_svamp("A has 5. B has 3. How many?") == ("A has 5. B has 3.", "How many?")
    assert split_svamp("no sentence break") == ("no sentence break", "")


# --- split, hash -------------------------------------------------------------------------------


def _examples(n):
    return [Example(f"e{i}", "cqa", {}, "x", line=i + 1, index=i) for i in range(n)]


def test_split_deterministic_and_disjoint():
    ex = _examples(100)
    train, dev = split(ex, 0.1, seed=3)
    assert len(dev) == 10 and len(train) == 90
    assert {e.id for e in train}.isdisjoint({e.id for e in dev})
    assert {e.id for e in train} | {e.id for e in dev} == {e.id for e in ex}
    assert split(ex, 0.1, seed=3) == (train, dev)
    assert split(ex, 0.1, seed=4)[1] != dev
    assert [e.index for e in dev] == sorted(e.index for e in dev)  # file order kept
    assert len(split(ex, 25)[1]) == 25
    assert len(split(_examples(5), 0.1)[1]) == 1  # a non-zero fraction keeps one dev example
    assert split(ex, 0) == (ex, [])


@pytest.mark.parametrize("dev_size", [100, 1.0, -1, 1.5, "10"])
def test_split_rejects_bad_sizes(dev_size):
    with pytest.raises(DataError):
        split(_examples(100), dev_size)


def test_data_hash(tmp_path):
    f = tmp_path / "x.json"
    f.write_bytes(b'{"a": 1}\n')
    assert data_hash(f) == hashlib.sha256(b'{"a": 1}\n').hexdigest()
