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
    # the suite runs on 2 cores; one torch and BLAS thread per test keeps timings stable (contended BLAS
    # threads make large eigenproblems many times slower) and results deterministic
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    k = int(os.environ.get("SDEGEN_TEST_THREADS", "1"))
    torch.set_num_threads(k)
    with threadpool_limits(k):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def random_vgg16(tmp_path_factory):
    """A torchvision VGG-16 state dict with random (seeded) weights: for checking the precision/recall
    pipeline without the ImageNet weights (its figures mean nothing)."""
    import torchvision

    path = tmp_path_factory.getbasetemp() / "random-vgg16.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.vgg16().state_dict(), path)
    return path
