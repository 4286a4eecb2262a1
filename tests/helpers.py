"""Helpers shared by several test modules (fixtures live in conftest.py): tiny seeded networks and data (built
inside torch.random.fork_rng or from explicit generators, never touching the global RNG), a trained digits MLP, a
plain SGD loop, exact Hessian references, the per-chip logits of an analog program, the CUDA engine cases, a small
scale-out job and a synthetic study result."""

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call

import anvm_stats as av
from anvm_stats import devices
from anvm_stats import dims
from anvm_stats.analog.fold import fold_batchnorm
from anvm_stats.data import digits
from anvm_stats.errors import ConfigError
from anvm_stats.hardware import DifferentialMapping, Drift, HardwareSpec, ProgrammingNoise
from anvm_stats.hessian import HessianOperator
from anvm_stats.models import MLP, build_model
from anvm_stats.training import epoch_order


# -- tiny networks and data -----------------------------------------------------------------------------------------

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


def train_digits_mlp(seed=0, hidden=(64,), epochs=30):
    """A digits MLP trained with a plain seeded Adam loop (never touches the global RNG)."""
    tr = digits("train")
    g = torch.Generator().manual_seed(seed)
    net = MLP(64, hidden, 10, generator=g)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(tr.y), generator=g)
        for i in range(0, len(perm), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(net(tr.x[b]), tr.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


# -- plain SGD reference (the noise-free HA-SGD must equal it step for step) ----------------------------------

def plain_sgd(net, x, y, *, epochs, batch_size, lr, seed, momentum=0.9, weight_decay=5e-4):
    net = copy.deepcopy(net).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for e in range(epochs):
        order = torch.as_tensor(epoch_order(seed, e, len(x)))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net


# -- tiny float64 problems with exact Hessians (hessian tests) ------------------------------------------------------

def tiny_mlp(seed=0):
    """MLP 3-4-3 (tanh) in float64."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


class TinyConv(nn.Module):
    """Conv2d -> BN -> tanh -> Conv1d over the flattened rows -> Linear, float64."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.conv1d = nn.Conv1d(2, 2, 2, bias=False)
        self.fc = nn.Linear(2 * 8, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))          # (n, 2, 3, 3)
        h = torch.tanh(self.conv1d(h.flatten(2)))      # (n, 2, 8)
        return self.fc(h.flatten(1))


def tiny_conv(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyConv().double()
        net.bn.running_mean.normal_(0, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
        return net.eval()


class Quadratic(nn.Module):
    """J(w) = 1/2 w^T A w + b^T w with w = [w1.flatten(), w2]; the output is J for every sample (loss: mean)."""

    def __init__(self, A, b, w1, w2):
        super().__init__()
        self.w1 = nn.Parameter(w1.clone())
        self.w2 = nn.Parameter(w2.clone())
        self.register_buffer("A", A.clone())
        self.register_buffer("b", b.clone())

    def flat(self):
        return torch.cat([self.w1.reshape(-1), self.w2])

    def forward(self, x):
        w = self.flat()
        return (0.5 * w @ self.A @ w + self.b @ w).expand(x.shape[0])


QUAD_LAYERS = {"first": ["w1"], "second": ["w2"]}


def quad_loss(out, y):
    return out.mean()


def make_quadratic(seed=0, diagonal=False):
    """w1 (2, 3) and w2 (4,): a 10-variable quadratic with a random symmetric (indefinite) A."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    m = r(10, 10)
    A = torch.diag(r(10) + 2.0) if diagonal else 0.5 * (m + m.T) + 3.0 * torch.eye(10, dtype=torch.float64)
    return Quadratic(A, r(10), r(2, 3), r(4))


def tiny_data(n=10, shape=(3,), n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, n_classes, (n,), generator=g)


def exact_hessian(model, x, y, names, loss_fn=F.cross_entropy):
    """Reference: torch.autograd.functional.hessian of the full-batch mean loss over the flattened ``names``."""
    params = dict(model.named_parameters())
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    buffers = dict(model.named_buffers())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    was = model.training
    model.eval()

    def f(flat):
        pieces, i = {}, 0
        for n, s in zip(names, shapes):
            pieces[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return loss_fn(functional_call(model, ({**fixed, **pieces}, buffers), (x,)), y)

    h = torch.autograd.functional.hessian(f, flat0)
    g = torch.autograd.functional.jacobian(f, flat0)
    model.train(was)
    return h, g, f(flat0).item()


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def assert_unchanged(model, snap):
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags


# -- analog programs: logits of every chip, and the float network of one chip -----------------------------------------

def logits(program, g, x):
    K = g.shape[0]
    program.load(g, B=x.shape[0])
    try:
        with torch.no_grad():
            return program.module(x).view(K, x.shape[0], -1)
    finally:
        program.unload()


def reference_net(net, program, g_one):
    """A plain float copy of ``net`` (BN folded) whose analog layers hold the decoded weights of one chip."""
    ref = copy.deepcopy(net).eval()
    fold_batchnorm(ref)
    weights = program.weights(g_one[None])
    with torch.no_grad():
        for plan in program.plans:
            mod = ref.get_submodule(plan.name)
            w = weights[plan.name][0]
            mod.weight.copy_(w[:, :plan.in_features].reshape(mod.weight.shape))
            if plan.bias_mode == "column":
                mod.bias.copy_(w[:, -1] * plan.bias_scale)
    return ref


# -- CUDA engine runs (skipped without a CUDA device) -----------------------------------------------------------------

CUDA_SPECS = {
    "paper1": av.devices.paper1(0.1),
    "faults_adc": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.StuckAt(p_off=0.02, p_on=0.01)),
                                  periphery=av.Periphery(dac=av.Quantizer(bits=6), adc=av.Quantizer(bits=8))),
    "read_noise": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                                  periphery=av.Periphery(output_noise=0.01)),
}


def cuda_data(net_kind):
    if net_kind == "resnet_large":     # 4 x 48 x 48 activations: runs channels-last
        return make_data(n=6, shape=(1, 48, 48))
    return make_data(n=40) if net_kind == "mlp" else make_data(n=12, shape=(1, 8, 8))


# -- Hessian blocks of the tiny nets ----------------------------------------------------------------------------------

def hessian_case(kind):
    if kind == "mlp":
        model, (x, y) = tiny_mlp(), tiny_data()
    else:
        model, (x, y) = tiny_conv(), tiny_data(n=7, shape=(1, 5, 5))
    op = HessianOperator(model, (x, y))
    h, _, _ = exact_hessian(model, x, y, op.names)
    return model, op, h


def layer_blocks(op, h):
    """Layer -> (start, stop) in the flattened order."""
    out, i = {}, 0
    for layer in op.layers:
        out[layer] = (i, i + op.numel(layer))
        i += op.numel(layer)
    return out


# -- a seeded MLP, spec and data for the scale-out tests --------------------------------------------------------------

def small_job(seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = MLP(16, (24,), 7, generator=gen)
    x = torch.randn(40, 16, generator=gen)
    y = torch.randint(0, 7, (40,), generator=gen)
    return net, devices.paper1(sigma=0.05), (x, y)


# -- a synthetic study result Dataset (report tests) ------------------------------------------------------------------

N, LEVELS, MODELS, LAYERS = 40, [0.02, 0.1, 0.2], ["plain", "robust"], ["fc1", "fc2", "fc3"]


def synthetic(seed=0, with_model=True) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (len(MODELS), len(LEVELS), N) if with_model else (len(LEVELS), N)
    base = 0.95 - 0.8 * np.asarray(LEVELS)[:, None]
    acc = np.clip(base + 0.03 * rng.standard_normal(shape), 0, 1)
    d = (["model"] if with_model else []) + [dims.NOISE_LEVEL, dims.INSTANCE]
    ds = xr.Dataset({dims.ACCURACY: (d, acc)},
                    coords={dims.NOISE_LEVEL: LEVELS, dims.INSTANCE: np.arange(N),
                            **({"model": MODELS} if with_model else {})})
    ds["sensitivity_trace"] = (("model", dims.LAYER) if with_model else (dims.LAYER,),
                               rng.uniform(1, 5, (len(MODELS), 3) if with_model else 3))
    ds["sensitivity_trace_se"] = ds["sensitivity_trace"] * 0.1
    ds = ds.assign_coords({dims.LAYER: LAYERS})
    ep = np.arange(1, 6)
    ds["history_loss"] = (("model", dims.EPOCH) if with_model else (dims.EPOCH,),
                          np.exp(-ep / 3) * (np.ones((2, 1)) if with_model else 1))
    ds["history_accuracy"] = ds["history_loss"] * 0 + 0.9
    ds = ds.assign_coords({dims.EPOCH: ep})
    ds.attrs.update(study="synthetic", report_yield_threshold=0.8, report_ci=0.95, report_quantiles=[0.05, 0.5, 0.95])
    return ds


# --- a tiny 6-input, 10-class classifier and its data (engine input checks) ---
TINY_CLASSES = 10


def tiny_mlp10():
    """MLP 6-5-10, seed 0."""
    return build_model("mlp", seed=0, in_features=6, hidden=[5], n_classes=TINY_CLASSES)


def tiny_data10(n=12):
    """``n`` seeded Gaussian inputs ``[n, 6]`` and labels in ``[0, 10)``."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g), torch.randint(0, TINY_CLASSES, (n,), generator=g)


def small_drift_spec():
    """Differential mapping, 5 % programming noise and drift."""
    return HardwareSpec(mapping=DifferentialMapping(), effects=(ProgrammingNoise(sigma=0.05),
                                                               Drift(nu_mean=0.05, nu_std=0.01)))


def assert_one_line_error(err: ConfigError, field: str, words) -> None:
    """``err`` names ``field`` in one line that says what is allowed and holds every word of ``words``."""
    msg = str(err)
    assert err.field == field and "\n" not in msg and "not allowed" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def nandakumar_drift_moments(g, t, t0=20.0):
    """Mean and sd of the drift factor ``(t/t0)^-nu``, ``nu = |mu(g) + sd(g) Z|`` (Nandakumar 2019 / aihwkit
    ``generate_drift_coefficients``), for an array of states ``g``, by numerical integration over ``Z``
    (scipy.integrate.quad_vec): an oracle independent of the package's sampling code. No drift for ``t <= t0``."""
    from scipy import integrate, stats

    g = np.atleast_1d(np.asarray(g, dtype=float))
    if t <= t0:
        return np.ones_like(g), np.zeros_like(g)
    lg = np.log(np.clip(np.abs(g), 1e-7, None))
    mu = np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045)
    L = np.log(t / t0)
    def moment(k):
        return integrate.quad_vec(lambda z: np.exp(-k * L * np.abs(mu + sd * z)) * stats.norm.pdf(z),
                                  -np.inf, np.inf, epsabs=1e-12, epsrel=1e-10)[0]

    m1, m2 = moment(1), moment(2)
    return m1, np.sqrt(np.clip(m2 - m1 * m1, 0.0, None))


def reference_any(net, program, g_one):
    """:func:`reference_net` for any analog module: a float copy of ``net`` whose crossbars (linear / conv layers,
    attention projections, recurrent matrices, analog embedding tables) hold the decoded weights of one chip."""
    ref = copy.deepcopy(net).eval()
    fold_batchnorm(ref)
    weights = program.weights(g_one[None])
    with torch.no_grad():
        for plan in program.plans:
            w = weights[plan.name][0]
            wt, b = w[:, :plan.in_features], (w[:, -1] * plan.bias_scale if plan.bias_mode == "column" else None)
            owner, _, part = plan.name.rpartition(".")
            parent = ref.get_submodule(owner) if owner else ref
            if isinstance(parent, nn.MultiheadAttention) and part == "in_proj":
                pw, pb = parent.in_proj_weight, parent.in_proj_bias
            elif isinstance(parent, nn.MultiheadAttention) and part in ("q_proj", "k_proj", "v_proj"):
                i = "qkv".index(part[0])
                E = parent.embed_dim
                pw = getattr(parent, f"{part}_weight")
                pb = None if parent.in_proj_bias is None else parent.in_proj_bias[i * E:(i + 1) * E]
            elif isinstance(parent, nn.RNNBase):
                kind, sfx = part.split("_", 1)
                pw = getattr(parent, f"weight_{kind}_{sfx}")
                pb = getattr(parent, f"bias_{kind}_{sfx}", None)
            else:
                mod = ref.get_submodule(plan.name)
                if isinstance(mod, nn.Embedding):
                    mod.weight.copy_(wt.t())
                    continue
                pw, pb = mod.weight, mod.bias
            pw.copy_(wt.reshape(pw.shape))
            if b is not None:
                pb.copy_(b)
    return ref


def load_study_script(name: str):
    """The shipped study script ``studies/<name>.py`` imported as a module (scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "studies" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: the smallest study file: a plain digits MLP under paper-1 noise, two noise levels, 4 chips (tests derive variants
#: with ``str.replace``)
TINY_STUDY = """\
[study]
name = "tiny"
seed = 1

[model]
name = "mlp"
args = { in_features = 64, hidden = [8], n_classes = 10 }

[data]
name = "digits"

[training]
method = "plain"
epochs = 1

[hardware]
preset = "paper1"
args = { sigma = 0.05 }

[sweep]
grid = { noise_level = [0.05, 0.1] }
n_instances = 4
"""


def fit_full_batch(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 150,
                   lr: float = 1e-2) -> nn.Module:
    """``net`` trained in place by full-batch Adam on cross-entropy (deterministic: no sampling), returned in
    eval mode."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


#: Triton is importable here (its interpreter runs kernels on the CPU)
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def run_triton_interpreted(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the checkout root with Triton's interpreter on
    (``TRITON_INTERPRET=1`` must be set before Triton builds a kernel, so never in the test process itself)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          timeout=timeout)
