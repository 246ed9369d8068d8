import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(params=["llama", "t5"])
def tiny(request):
    import tiny as t

    return t.loaded(request.param)


@pytest.fixture
def datasets_dir():
    if not DATASETS.is_dir():
        pytest.skip(f"task data not found at {DATASETS}")
    return DATASETS
