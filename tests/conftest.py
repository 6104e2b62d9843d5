import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _fixed_threads():
    # the suite runs on 2 cores; one thread per test keeps timings stable and results deterministic
    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SDEGEN_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(n)
