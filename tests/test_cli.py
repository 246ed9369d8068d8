"""The explain CLI: readable output, exact JSON, one-line errors with non-zero exit."""

import json

import pytest

from explain.cli import main


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


def test_attribute_json(model_dir, capsys):
    rc = main(
        [
            "attribute",
            "--model",
            model_dir,
            "--question",
            "Where is the plate?",
            "--choices",
            "cupboard|table|sink",
            "--method",
            "input_x_gradient",
            "--top-k",
            "2",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0
    # the model load is shown as a progress bar on stderr, never mixed into the JSON
    assert "loading" in captured.err and "loaded on cpu" in captured.err and "100%" in captured.err
    result = json.loads(out)
    assert result["method"] == "input_x_gradient" and result["template"] == "cqa"
    assert len(result["rationale"]) == 2
    assert len(result["matrix"]) == len(result["output_tokens"])


def test_attribute_text_view(model_dir, capsys):
    rc = main(
        [
            "attribute",
            "--model",
            model_dir,
            "--premise",
            "A dog runs.",
            "--hypothesis",
            "An animal moves.",
            "--answer",
            "entailment",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "answer    entailment  [given]" in out
    assert "rationale" in out and "#" in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--text", "   "], "error: the text is empty"),
        (["--premise", "p"], "error: give both --premise and --hypothesis"),
        (["--text", "hi", "--top-k", "0"], "error: --top-k must be at least 1"),
        (["--text", "hi", "--steps", "4"], "error: --steps applies to integrated_gradients only"),
    ],
)
def test_bad_input_one_line_error(model_dir, capsys, argv, msg):
    rc = main(["attribute", "--model", model_dir, *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(msg) and err.count("\n") == 1


def test_unknown_model_one_line_error(capsys):
    rc = main(["attribute", "--model", "./no/such/folder", "--text", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model spec" in err and err.count("\n") == 1
