"""Content-based repeats between a test file and the training pool (distill.leaks)."""

from distill.data import Example
from distill.leaks import content_key, describe, repeats


def _nli(id_: str, premise: str, hypothesis: str, label: str = "neutral", line: int = 1):
    return Example(id=id_, task="esnli", fields={"premise": premise, "hypothesis": hypothesis},
                   label=label, line=line)  # fmt: skip


def test_same_ids_other_content_are_not_repeats():
    pool = [_nli("esnli-1", "A dog runs.", "An animal moves.", line=1)]
    test = [_nli("esnli-1", "A cat sleeps.", "A cat is awake.", line=1)]
    assert repeats(test, pool) == []


def test_same_content_is_a_repeat_whatever_the_id_label_case_and_spacing():
    pool = [_nli("p-1", "A dog runs.", "An animal moves.", line=7),
            _nli("p-2", "A dog runs.", "A cat moves.", line=8)]  # fmt: skip
    test = [_nli("t-1", "a  DOG runs.", " An animal moves. ", label="entailment", line=3),
            _nli("t-2", "A dog runs.", "A bird moves.", line=4)]  # fmt: skip
    (r,) = repeats(test, pool)
    assert (r.test_id, r.test_line, r.pool_id, r.pool_line) == ("t-1", 3, "p-1", 7)


def test_list_fields_and_task_are_part_of_the_key():
    a = Example(id="a", task="cqa", fields={"question": "Q?", "choices": ["x", "y"]}, label="x")
    b = Example(id="b", task="cqa", fields={"question": "Q?", "choices": ["X ", "y"]}, label="y")
    c = Example(id="c", task="cqa", fields={"question": "Q?", "choices": ["y", "x"]}, label="x")
    assert content_key(a) == content_key(b) != content_key(c)
    other_task = Example(id="a", task="anli1", fields=dict(a.fields), label="x")
    assert content_key(other_task) != content_key(a)


def test_describe_names_lines_and_counts():
    pool = [_nli(f"p{i}", f"P {i}.", "H.", line=i + 1) for i in range(5)]
    test = [_nli(f"t{i}", f"p {i}.", "h.", line=10 + i) for i in range(5)]
    text = describe(repeats(test, pool), 9, "test.jsonl", "train.json")
    assert text.startswith("5 of the 9 records of the test file test.jsonl")
    assert "line 10 = train.json line 1" in text and "and 2 more" in text
