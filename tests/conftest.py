"""Shared fixtures (tiny seeded networks from tests.helpers, one intra-op thread) and the hypothesis profiles."""

import pytest
import torch
from hypothesis import settings

from tests.helpers import make_mlp, make_resnet

# Property tests run the same examples on every run (no flaky CI), without wall-clock deadlines (shared 2-core
# machines); HYPOTHESIS_PROFILE=explore searches fresh random examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture
def resnet():
    return make_resnet()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: one intra-op thread is faster and immune to the other users of the 2 shared cores.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def exact_float32():
    """CUDA tests: no TF32 matmuls or convolutions (exact float32 comparisons), restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
