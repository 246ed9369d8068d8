"""One table from experiment folders that differ only in their seeds (``distill combine``)."""

import json
import math
from pathlib import Path

import pytest

from distill.combine import CombineError, combine
from distill.plan import Plan

IDS = [f"q{i}" for i in range(10)]


def _exp(root: Path, name: str, seeds: list[int], correct: dict, sha: str = "f" * 64,
         **plan_kw) -> Path:  # fmt: skip
    """A finished experiment folder as run_plan leaves it: plan.json, results.json and
    predictions files whose recorded paths are relative to another working folder (found by
    name)."""
    folder = root / name
    folder.mkdir()
    plan = Plan(task="cqa", data="train.jsonl", out=str(folder), seeds=seeds,
                modes=["standard", "saliency"], test_data="test.jsonl", **plan_kw)  # fmt: skip
    models = []
    for mode, seed in [("zero-shot", seeds[0])] + [(m, s) for m in plan.modes for s in seeds]:
        pattern = correct[(mode, seed)]
        preds = folder / f"predictions-{mode}-s{seed}.jsonl"
        preds.write_text("".join(json.dumps({"id": i, "correct": c}) + "\n"
                                 for i, c in zip(IDS, pattern)))  # fmt: skip
        acc = sum(pattern) / len(pattern)
        models.append({
            "name": f"{mode}-s{seed}", "mode": mode, "seed": seed, "accuracy": acc,
            "ci_low": acc - 0.1, "ci_high": acc + 0.1, "choice_accuracy": None, "n": 10,
            "eval_set": "test file", "run_dir": None if mode == "zero-shot" else "x",
            "predictions": f"elsewhere/{preds.name}", "cached": False,
            "dev_accuracy": None if mode == "zero-shot" else 0.5,
            "train_seconds": None if mode == "zero-shot" else 100.0 + seed,
        })  # fmt: skip
    (folder / "plan.json").write_text(json.dumps(plan.to_dict()))
    (folder / "results.json").write_text(json.dumps({
        "plan": plan.to_dict(), "evaluation": "test file test.jsonl", "test_sha256": sha,
        "extraction": {"n": 6 + seeds[0]}, "models": models, "finished": "2026-12-01",
    }))  # fmt: skip
    return folder


def _correct(seed: int, shift: int = 0) -> dict:
    return {
        ("zero-shot", seed): [i < 2 for i in range(10)],
        ("standard", seed): [i < 7 - seed for i in range(10)],
        ("saliency", seed): [(i + shift) % 2 == 0 for i in range(10)],
    }


def test_combine_two_seed_folders(tmp_path):
    e0 = _exp(tmp_path, "e0", [0], _correct(0))
    e1 = _exp(tmp_path, "e1", [1], _correct(1, shift=1))
    md_path, json_path = combine([e0, e1], tmp_path / "both")
    md, data = md_path.read_text(), json.loads(json_path.read_text())
    assert data["plan"]["seeds"] == [0, 1] and data["plan"]["out"] == str(tmp_path / "both")
    assert [s["folder"] for s in data["combined_from"]] == [str(e0), str(e1)]
    assert data["test_sha256"] == "f" * 64
    # The untrained student once (first folder), trained modes at both seeds.
    names = [m["name"] for m in data["models"]]
    assert names == ["zero-shot-s0", "standard-s0", "standard-s1", "saliency-s0", "saliency-s1"]
    assert "| standard | — | 0.650 | s0: 0.700 [0.600, 0.800]; s1: 0.600 [0.500, 0.700] |" in md
    assert md.count("\n| zero-shot | — |") == 1 and "| 10 | 0.500 | 100 |" in md  # seed means
    # Exact McNemar for every pair in the JSON (5 models: 10 pairs); the table shows the same
    # seed, a mode against itself at another seed, and the untrained student against each.
    pairs = {(p["model_a"], p["model_b"]) for p in data["paired"]}
    assert len(pairs) == 10 and ("standard-s0", "saliency-s1") in pairs
    assert "| standard-s0 | standard-s1 |" in md and "| standard-s0 | saliency-s0 |" in md
    assert "| zero-shot-s0 | saliency-s1 |" in md
    assert "| standard-s0 | saliency-s1 |" not in md and "| standard-s1 | saliency-s0 |" not in md
    assert "2 more pairs (two modes at different seeds) are in results.json" in md
    # Seed-averaged comparison of every pair of modes.
    pooled = {(p["model_a"], p["model_b"]): p for p in data["seed_pooled"]}
    assert set(pooled) == {("zero-shot", "standard"), ("zero-shot", "saliency"),
                           ("standard", "saliency")}  # fmt: skip
    st = pooled[("standard", "saliency")]
    assert (st["seeds_a"], st["seeds_b"], st["n"]) == (2, 2, 10)
    assert st["accuracy_a"] == pytest.approx(0.65) and st["accuracy_b"] == pytest.approx(0.5)
    assert st["per_seed"] == [pytest.approx(0.2), pytest.approx(0.1)]
    zs = pooled[("zero-shot", "standard")]
    assert zs["per_seed"] == [pytest.approx(-0.5), pytest.approx(-0.4)]
    assert st["seeds_agree"] is True  # +0.2 and +0.1
    # t-test of +0.2 and +0.1 (1 degree of freedom, Cauchy): 1 - 2 atan(3) / pi.
    assert st["seed_t_p"] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    assert st["seed_ci_low"] <= 0.15 <= st["seed_ci_high"]
    assert zs["seed_t_p"] is not None and zs["seed_ci_high"] < 0
    assert "Seed-averaged comparisons" in md and "| standard | saliency | 10 | 2/2 |" in md
    assert "| +0.200, +0.100 | yes |" in md
    assert "95% CI (seeds, examples) | t-test p (seeds) |" in md
    assert f"| {1 - 2 * math.atan(3) / math.pi:.3g} |" in md


@pytest.mark.parametrize(
    "second, match",
    [
        (lambda root: _exp(root, "e1", [0], _correct(0)), "seed 0 is in two folders"),
        (lambda root: _exp(root, "e1", [1], _correct(1), lr=2e-4), r"another plan .*\(lr\)"),
        (lambda root: _exp(root, "e1", [1], _correct(1), sha="0" * 64), "another test file"),
        (lambda root: root / "e0", "one of the experiment folders"),
        (lambda root: root / "missing", "no finished experiment"),
        (lambda root: _exp(root, "e1", [1], _correct(1)), "holds an experiment"),
    ],
)
def test_combine_refuses_folders_that_do_not_belong_together(tmp_path, second, match):
    e0 = _exp(tmp_path, "e0", [0], _correct(0))
    other = second(tmp_path)
    out = other if other.name == "e0" else tmp_path / "both"
    if match == "holds an experiment":  # another experiment's folder as --out
        out = _exp(tmp_path, "e2", [2], _correct(2))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(CombineError, match=match):
        combine([e0, other], out)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written
