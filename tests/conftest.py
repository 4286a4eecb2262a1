"""Shared fixtures: tiny seeded networks and data (built inside torch.random.fork_rng, never touching the
global RNG state seen by other tests)."""

import pytest
import torch
from hypothesis import settings
from torch import nn

# Property tests run the same examples on every run (no flaky CI), without wall-clock deadlines (shared 2-core
# machines); HYPOTHESIS_PROFILE=explore searches fresh random examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


def make_mlp(seed=0, sizes=(8, 16, 16, 4), bn=True):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.1)
        return net.eval()


class TinyResNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block with a 1x1 conv shortcut, a Conv1d-free head."""

    def __init__(self, c=4, n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.short = nn.Conv2d(c, 2 * c, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + self.short(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_resnet(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyResNet()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
        return net.eval()


def make_data(seed=0, n=24, shape=(8,), n_classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, n_classes, (n,), generator=g)


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
