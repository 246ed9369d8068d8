"""The datasets folder rule and the bundled demo sample (made from the full data when present)."""

import json

import pytest

from distill import datasets as dsets
from distill.data import (
    DataError,
    attach_llm_rationales,
    default_path,
    load_llm_rationales,
    load_task,
)


def test_rule_env_then_shared_then_sample(tmp_path, monkeypatch):
    monkeypatch.delenv(dsets.ENV_VAR, raising=False)
    monkeypatch.setattr(dsets, "SHARED_DATASETS", tmp_path / "no-such")
    assert dsets.resolve_datasets() == dsets.DatasetsLocation(dsets.SAMPLE_DATASETS, "sample")
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(dsets, "SHARED_DATASETS", shared)
    assert dsets.datasets_dir() == shared
    monkeypatch.setenv(dsets.ENV_VAR, str(tmp_path))
    assert dsets.resolve_datasets() == dsets.DatasetsLocation(tmp_path, "env")
    monkeypatch.setenv(dsets.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(DataError, match="KDLENS_DATASETS=.*nope is not a folder"):
        dsets.datasets_dir()


def test_bundled_sample_is_complete_small_and_aligned():
    root = dsets.SAMPLE_DATASETS
    assert dsets.missing_files(root) == []
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2_000_000  # a few hundred kB: the repository stays small
    assert (root / "README.md").is_file()
    for task, (_name, split) in dsets.LAYOUT.items():
        examples = load_task(task, default_path(task, root))
        assert len(examples) == dsets.SAMPLE_SIZE
        rationales = load_llm_rationales(root / task, split)
        assert len(rationales) == len(examples)
        attach_llm_rationales(examples, rationales)
        assert all(e.llm_rationale for e in examples)


def test_sample_matches_the_full_data_record_by_record():
    """Each sampled record and its PaLM rationale are the source's, at the manifest's index
    (the comparison with the source runs where ../shared/datasets exists)."""
    full = dsets.SHARED_DATASETS
    manifest = json.loads((dsets.SAMPLE_DATASETS / "manifest.json").read_text())
    for task, (name, split) in dsets.LAYOUT.items():
        sample_lines = (dsets.SAMPLE_DATASETS / task / name).read_text().splitlines()
        sample_llm = load_llm_rationales(dsets.SAMPLE_DATASETS / task, split, raw=True)
        idx = manifest["tasks"][task]["indices"]
        assert idx == sorted(idx) and len(idx) == len(sample_lines) == len(sample_llm)
        assert idx[: dsets.SAMPLE_KEEP_FIRST] == list(range(dsets.SAMPLE_KEEP_FIRST))
        if full.is_dir():
            src_lines = (full / task / name).read_text().splitlines()
            src_llm = load_llm_rationales(full / task, split, raw=True)
            assert manifest["tasks"][task]["source_records"] == len(src_lines)
            assert sample_lines == [src_lines[i] for i in idx]
            assert sample_llm == [src_llm[i] for i in idx]
            assert idx == dsets.sample_indices(len(src_lines))  # the documented command


def _fake_source(root, n):
    for task, (name, split) in dsets.LAYOUT.items():
        (root / task / "llm").mkdir(parents=True)
        recs = [json.dumps({"k": i}) for i in range(n)]
        (root / task / name).write_text("\n".join(recs) + "\n")
        half = n // 2  # two CoT files, as in the full release
        (root / task / "llm" / f"{split}_CoT_0.json").write_text(
            json.dumps([f"r{i}" for i in range(half)])
        )
        (root / task / "llm" / f"{split}_CoT_1.json").write_text(
            json.dumps([f"r{i}" for i in range(half, n)])
        )


def test_make_sample_is_deterministic_and_reindexes(tmp_path):
    _fake_source(tmp_path / "src", 50)
    reports = dsets.make_sample(tmp_path / "src", tmp_path / "a", size=10, seed=3)
    dsets.make_sample(tmp_path / "src", tmp_path / "b", size=10, seed=3)
    for p in (tmp_path / "a").rglob("*.json"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
    for r in reports:
        name, split = dsets.LAYOUT[r.task]
        lines = (tmp_path / "a" / r.task / name).read_text().splitlines()
        llm = json.loads((tmp_path / "a" / r.task / "llm" / f"{split}_CoT_0.json").read_text())
        assert [json.loads(ln)["k"] for ln in lines] == r.indices
        assert llm == [f"r{i}" for i in r.indices]  # entry i belongs to sampled record i
        assert r.indices[:3] == [0, 1, 2] and len(set(r.indices)) == 10
    other = dsets.make_sample(tmp_path / "src", tmp_path / "c", size=10, seed=4)
    assert [r.indices for r in other] != [r.indices for r in reports]


def test_make_sample_rejects_misaligned_rationales(tmp_path):
    _fake_source(tmp_path / "src", 20)
    (tmp_path / "src" / "cqa" / "llm" / "train_CoT_1.json").write_text('["only one"]')
    with pytest.raises(DataError, match="cqa: 20 records but 11 LLM rationales"):
        dsets.make_sample(tmp_path / "src", tmp_path / "out", size=5, tasks=["cqa"])


def test_cli_exit_codes(tmp_path, capsys):
    assert dsets.main(["--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "source file not found" in capsys.readouterr().err
    _fake_source(tmp_path / "src", 8)
    assert dsets.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "o"),
                       "--size", "4"]) == 0  # fmt: skip
    assert "cqa: 4 of 8 records" in capsys.readouterr().out
