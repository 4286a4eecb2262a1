"""Model zoo for studies: MLP, LeNet-5, CIFAR-style ResNet-20/32, pre-activation WideResNet, and sequence models (a
transformer classifier over tokens, e.g. digits rows; character-level language models: a causal transformer and a
causal convolutional one).

The image models are plain ``nn.Module``s of ``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm`` / ReLU / pooling,
traceable by ``torch.fx.symbolic_trace`` (no data-dependent control flow, no in-place ops), so that the analog
engine maps every Linear and Conv2d to crossbars and folds each BatchNorm that directly follows one. The sequence
models add LayerNorm, GELU and ``nn.TransformerEncoderLayer`` (attention) or causal Conv1d stacks.

Randomness: every constructor takes ``generator``. With a ``torch.Generator`` the initial weights are drawn from
it alone and torch's global RNG state is left as it was; with ``None`` they are drawn from the global RNG (so they
are deterministic under a caller's ``torch.random.fork_rng()`` + ``torch.manual_seed``). ``build_model(name,
seed=s)`` makes the generator from ``s``. Library code never seeds the global RNG.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, check, check_number

Tensor = torch.Tensor

__all__ = ["MLP", "LeNet5", "BasicBlock", "ResNet", "resnet20", "resnet32", "WideBasicBlock", "WideResNet",
           "wide_resnet", "TokenTransformer", "CharTransformer", "CharCNN", "sinusoidal_positions", "build_model",
           "model_summary", "load_weights_file", "apply_state_dict", "MODELS"]


# --- initialisation ---------------------------------------------------------------------------------------
def _rng_guard(generator: torch.Generator | None):
    """While building layers with a generator given, keep the global CPU RNG state untouched (torch's own
    layer constructors draw from it; those draws are then overwritten by :func:`_init`)."""
    if generator is None:
        return contextlib.nullcontext()
    check(isinstance(generator, torch.Generator), "generator", type(generator).__name__,
          "a torch.Generator or None")
    return torch.random.fork_rng(devices=[])


def _default_init(m: nn.Module, g: torch.Generator | None) -> None:
    """PyTorch's default init of Linear/Conv (kaiming-uniform with a=sqrt(5), bias U(+-1/sqrt(fan_in)))."""
    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
    if m.bias is not None:
        fan_in = m.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(m.bias, -bound, bound, generator=g)


def _init(model: nn.Module, g: torch.Generator | None, conv: str = "default") -> None:
    """(Re)initialise every parameter of ``model``: convs by ``conv`` ("default" or "he": kaiming-normal,
    fan_out, relu, bias 0), linears by PyTorch's default, BatchNorm weight 1 and bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                if conv == "he":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                else:
                    _default_init(m, g)
            elif isinstance(m, nn.Linear):
                _default_init(m, g)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()


def _int(field: str, value: object, low: int = 1) -> int:
    check_number(field, value, low=low, integer=True)
    return int(value)


def _stages_per_depth(arch: str, depth: object, offset: int, examples: str) -> int:
    """Blocks per stage ``n`` of a CIFAR-style residual network of ``depth = 6 n + offset`` layers."""
    depth = _int(f"{arch}.depth", depth, low=6 + offset)
    check((depth - offset) % 6 == 0, f"{arch}.depth", depth, f"6n + {offset} ({examples}, ...)")
    return (depth - offset) // 6


# --- MLP --------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Fully connected ReLU network: ``in_features -> hidden[0] -> ... -> n_classes``.

    Inputs of any shape ``[N, ...]`` are flattened to ``[N, in_features]``. ``hidden=()`` gives a linear
    classifier.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (256, 256), n_classes: int = 10, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        in_features = _int("MLP.in_features", in_features)
        n_classes = _int("MLP.n_classes", n_classes)
        check(isinstance(hidden, (tuple, list)), "MLP.hidden", hidden, "a tuple of layer widths")
        hidden = tuple(_int("MLP.hidden", h) for h in hidden)
        self.arch = f"mlp-{in_features}-{'-'.join(map(str, hidden)) + '-' if hidden else ''}{n_classes}"
        with _rng_guard(generator):
            layers: list[nn.Module] = []
            width = in_features
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, n_classes))
            self.layers = nn.Sequential(*layers)
        _init(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(torch.flatten(x, 1))


# --- LeNet-5 ----------------------------------------------------------------------------------------------
class LeNet5(nn.Module):
    """LeNet-5 with BatchNorm: two conv(5x5, padding 2)-BN-ReLU-maxpool(2) blocks (6 and 16 channels), adaptive
    average pooling to ``p x p`` with ``p = clamp(input_size // 4, 1, 5)``, then 120-84-``n_classes`` ReLU
    linears. ``input_size`` only sets ``p`` (5 for 28x28 MNIST and 32x32 CIFAR, 2 for 8x8 digits); the
    network accepts any input of at least 4x4 pixels.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, input_size: int = 28, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        in_channels = _int("LeNet5.in_channels", in_channels)
        n_classes = _int("LeNet5.n_classes", n_classes)
        input_size = _int("LeNet5.input_size", input_size, low=4)
        p = max(1, min(5, input_size // 4))
        self.arch = "lenet5"
        with _rng_guard(generator):
            self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2, bias=False)
            self.bn1 = nn.BatchNorm2d(6)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(6, 16, 5, padding=2, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.relu2 = nn.ReLU()
            self.pool2 = nn.MaxPool2d(2)
            self.pool = nn.AdaptiveAvgPool2d(p)
            self.fc1 = nn.Linear(16 * p * p, 120)
            self.relu3 = nn.ReLU()
            self.fc2 = nn.Linear(120, 84)
            self.relu4 = nn.ReLU()
            self.fc3 = nn.Linear(84, n_classes)
        _init(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = torch.flatten(self.pool(x), 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


# --- CIFAR ResNet (He et al. 2016, section 4.2) -----------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU. The shortcut is the identity, or (option B) a
    1x1 conv + BN when the stride or the width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of ``depth = 6n + 2`` layers: a 3x3 stem conv, three stages of ``n`` basic blocks of
    widths ``width, 2*width, 4*width`` (strides 1, 2, 2), adaptive average pooling and a linear classifier.
    Any input size works (8x8 digits as well as 32x32 CIFAR). He-normal conv init."""

    def __init__(self, depth: int = 20, n_classes: int = 10, in_channels: int = 3, width: int = 16, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        n = _stages_per_depth("ResNet", depth, 2, "20, 32, 44, 56, 110")
        depth = 6 * n + 2
        n_classes, in_channels, width = (_int(f"ResNet.{k}", v) for k, v in
                                         (("n_classes", n_classes), ("in_channels", in_channels), ("width", width)))
        self.arch = f"resnet{depth}" + ("" if width == 16 else f"-w{width}")
        with _rng_guard(generator):
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            planes = width
            stages = []
            for i, mult in enumerate((1, 2, 4)):
                blocks = []
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    blocks.append(BasicBlock(planes, width * mult, stride))
                    planes = width * mult
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = stages
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(planes, n_classes)
        _init(self, generator, conv="he")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(n_classes: int = 10, in_channels: int = 3, width: int = 16, *,
             generator: torch.Generator | None = None) -> ResNet:
    """ResNet-20 (about 0.27 M parameters at width 16, 10 classes)."""
    return ResNet(20, n_classes, in_channels, width, generator=generator)


def resnet32(n_classes: int = 10, in_channels: int = 3, width: int = 16, *,
             generator: torch.Generator | None = None) -> ResNet:
    """ResNet-32 (about 0.47 M parameters at width 16, 10 classes)."""
    return ResNet(32, n_classes, in_channels, width, generator=generator)


# --- WideResNet (Zagoruyko & Komodakis 2016), pre-activation ----------------------------------------------
class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the identity or, when
    the shape changes, a 1x1 conv of the pre-activated input. Only ``bn2`` directly follows a conv (``conv1``)
    and so can be folded; ``bn1`` acts on a residual sum and stays digital."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.equal = in_planes == planes and stride == 1
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        out = self.conv2(self.dropout(out))
        if self.shortcut is None:
            return x + out
        return self.shortcut(pre) + out


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: a 3x3 stem conv (16 channels), three stages of ``(depth - 4) / 6`` pre-activation
    wide blocks of widths ``16k, 32k, 64k`` (strides 1, 2, 2), a final BN-ReLU, adaptive average pooling and a
    linear classifier. WRN-28-10 with 100 classes has about 36.5 M parameters."""

    def __init__(self, depth: int = 28, widen: int = 10, n_classes: int = 100, in_channels: int = 3,
                 dropout: float = 0.0, *, generator: torch.Generator | None = None):
        super().__init__()
        n = _stages_per_depth("WideResNet", depth, 4, "10, 16, 22, 28, 40")
        depth = 6 * n + 4
        widen, n_classes, in_channels = (_int(f"WideResNet.{k}", v) for k, v in
                                         (("widen", widen), ("n_classes", n_classes), ("in_channels", in_channels)))
        check_number("WideResNet.dropout", dropout, low=0, high=1, high_open=True)
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.arch = f"wrn-{depth}-{widen}"
        with _rng_guard(generator):
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
            planes = widths[0]
            stages = []
            for i in range(3):
                blocks = []
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    blocks.append(WideBasicBlock(planes, widths[i + 1], stride, float(dropout)))
                    planes = widths[i + 1]
                stages.append(nn.Sequential(*blocks))
            self.block1, self.block2, self.block3 = stages
            self.bn = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(planes, n_classes)
        _init(self, generator, conv="he")
        with torch.no_grad():
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def wide_resnet(depth: int = 28, widen: int = 10, n_classes: int = 100, in_channels: int = 3,
                dropout: float = 0.0, *, generator: torch.Generator | None = None) -> WideResNet:
    """Pre-activation WideResNet WRN-``depth``-``widen`` (Zagoruyko & Komodakis, 2016)."""
    return WideResNet(depth, widen, n_classes, in_channels, dropout, generator=generator)


# --- sequence models --------------------------------------------------------------------------------------
#: vocabulary size of the embedded text corpus (``len(anvm_stats.data.chars.vocabulary())``; checked by a test)
TEXT_VOCABULARY = 88


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sinusoidal position codes ``[length, dim]`` (Vaswani et al., 2017): no parameters, so nothing but the
    projections is trained or mapped to a chip."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


def _encoder_layers(n: int, d_model: int, heads: int, ff: int) -> nn.ModuleList:
    """``n`` pre-norm ``nn.TransformerEncoderLayer`` (GELU, no dropout, batch first): names ``blocks.<i>.self_attn``
    (q/k/v packed in ``in_proj_weight``, ``out_proj``), ``blocks.<i>.linear1`` / ``linear2`` (the MLP)."""
    check(d_model % heads == 0, "heads", heads, f"a divisor of d_model={d_model}")
    return nn.ModuleList(nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, activation="gelu",
                                                    batch_first=True, norm_first=True) for _ in range(n))


def _init_sequence(model: nn.Module, g: torch.Generator | None) -> None:
    """:func:`_init`, plus the attention's packed projections (Xavier-uniform, bias 0, as torch does) and
    embeddings (N(0, 1)) drawn from ``g``; LayerNorms at weight 1, bias 0."""
    _init(model, g)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                nn.init.xavier_uniform_(m.in_proj_weight, generator=g)
                nn.init.zeros_(m.in_proj_bias)
                nn.init.zeros_(m.out_proj.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, generator=g)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()


class TokenTransformer(nn.Module):
    """Transformer encoder classifier over a sequence of tokens; by default the digits as rows: an 8x8 image
    (``[N, 64]``, ``[N, 1, 8, 8]`` or ``[N, 8, 8]``) read as 8 tokens of 8 pixels.

    ``embed`` (Linear, token-wise) -> + sinusoidal positions -> ``layers`` pre-norm encoder layers (``blocks``) ->
    LayerNorm -> mean over tokens -> ``head`` (Linear). Output ``[N, n_classes]``.
    """

    def __init__(self, tokens: int = 8, token_features: int = 8, n_classes: int = 10, d_model: int = 32,
                 heads: int = 4, layers: int = 2, ff: int = 64, *, generator: torch.Generator | None = None):
        super().__init__()
        self.tokens = _int("TokenTransformer.tokens", tokens)
        self.token_features = _int("TokenTransformer.token_features", token_features)
        n_classes, d_model = _int("TokenTransformer.n_classes", n_classes), _int("TokenTransformer.d_model", d_model)
        heads, ff = _int("TokenTransformer.heads", heads), _int("TokenTransformer.ff", ff)
        layers = _int("TokenTransformer.layers", layers, low=0)
        self.arch = f"token_transformer-{self.tokens}x{self.token_features}-d{d_model}-h{heads}-l{layers}-{n_classes}"
        with _rng_guard(generator):
            self.embed = nn.Linear(self.token_features, d_model)
            self.blocks = _encoder_layers(layers, d_model, heads, ff)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, n_classes)
        self.register_buffer("positions", sinusoidal_positions(self.tokens, d_model), persistent=False)
        _init_sequence(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.reshape(x.shape[0], self.tokens, self.token_features)) + self.positions
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


class CharTransformer(nn.Module):
    """Causal transformer language model over characters: ``[N, L, V]`` scores of the next character at each of
    ``L <= length`` positions.

    Inputs are one-hot ``[N, L, V]`` floats (``inputs="one_hot"``: ``embed`` is a token-wise Linear without bias,
    an MVM) or token ids ``[N, L]`` (``inputs="ids"``: ``embed`` is an ``nn.Embedding``, a table lookup), as
    :func:`anvm_stats.data.text` gives them. ``embed`` -> + sinusoidal positions -> ``layers`` causal pre-norm
    encoder layers (``blocks``) -> LayerNorm -> ``head`` (Linear to ``vocab``).
    """

    def __init__(self, vocab: int = TEXT_VOCABULARY, length: int = 32, d_model: int = 48, heads: int = 4,
                 layers: int = 2, ff: int = 96, inputs: str = "one_hot", *,
                 generator: torch.Generator | None = None):
        super().__init__()
        vocab, self.length = _int("CharTransformer.vocab", vocab), _int("CharTransformer.length", length)
        d_model, heads = _int("CharTransformer.d_model", d_model), _int("CharTransformer.heads", heads)
        ff, layers = _int("CharTransformer.ff", ff), _int("CharTransformer.layers", layers, low=0)
        check(inputs in ("one_hot", "ids"), "CharTransformer.inputs", inputs, "'one_hot' or 'ids'")
        self.arch = f"char_transformer-v{vocab}-L{self.length}-d{d_model}-h{heads}-l{layers}-{inputs}"
        with _rng_guard(generator):
            self.embed = nn.Linear(vocab, d_model, bias=False) if inputs == "one_hot" else nn.Embedding(vocab, d_model)
            self.blocks = _encoder_layers(layers, d_model, heads, ff)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)
        self.register_buffer("positions", sinusoidal_positions(self.length, d_model), persistent=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(self.length), persistent=False)
        _init_sequence(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        h = self.embed(x) + self.positions[:L]
        for block in self.blocks:
            h = block(h, src_mask=self.mask[:L, :L], is_causal=True)
        return self.head(self.norm(h))


class CharCNN(nn.Module):
    """Causal convolutional language model over characters: the scores ``[N, L, V]`` of the next character at
    every position from the ``context`` characters up to it; one-hot inputs ``[N, L, V]``.

    ``conv`` (Conv1d over the one-hot channels, width ``context``, left-padded so no position sees a later one) ->
    ReLU -> ``layers`` 1x1 ``mix`` Conv1d + ReLU -> ``head`` (1x1 Conv1d to ``vocab``). Every layer is a Conv1d: the
    analog engine maps it today (a character model whose layers all see ``[N, C, L]`` inputs).
    """

    def __init__(self, vocab: int = TEXT_VOCABULARY, context: int = 8, hidden: int = 128, layers: int = 1, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        vocab, self.context = _int("CharCNN.vocab", vocab), _int("CharCNN.context", context)
        hidden, layers = _int("CharCNN.hidden", hidden), _int("CharCNN.layers", layers, low=0)
        self.arch = f"char_cnn-v{vocab}-c{self.context}-h{hidden}-l{layers}"
        with _rng_guard(generator):
            self.conv = nn.Conv1d(vocab, hidden, self.context)
            self.mix = nn.Sequential(*[m for _ in range(layers) for m in (nn.Conv1d(hidden, hidden, 1), nn.ReLU())])
            self.head = nn.Conv1d(hidden, vocab, 1)
        _init(self, generator)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.pad(x.transpose(1, 2), (self.context - 1, 0))
        h = self.mix(torch.relu(self.conv(h)))
        return self.head(h).transpose(1, 2)


# --- registry ---------------------------------------------------------------------------------------------
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet": ResNet,
    "wrn": wide_resnet,
    "tokentransformer": TokenTransformer,
    "chartransformer": CharTransformer,
    "charcnn": CharCNN,
}


def build_model(name: str, *, seed: int | None = None, **kwargs) -> nn.Module:
    """Build a zoo model by name.

    Parameters
    ----------
    name : str
        ``"mlp"``, ``"lenet5"``, ``"resnet20"``, ``"resnet32"``, ``"resnet"`` (takes ``depth``), ``"wrn"``
        (takes ``depth`` and ``widen``), ``"token_transformer"``, ``"char_transformer"`` or ``"char_cnn"``. Case
        and ``-``/``_`` are ignored.
    seed : int, optional
        Draw the initial weights from ``torch.Generator().manual_seed(seed)`` (global RNG untouched). Without
        it (and without ``generator=``) the global RNG is used.
    **kwargs
        Passed to the constructor, e.g. ``n_classes=10, in_channels=1``.
    """
    key = name.strip().lower().replace("-", "").replace("_", "") if isinstance(name, str) else name
    if key not in MODELS:
        raise ConfigError("model name", name, f"one of {list(MODELS)}")
    factory = MODELS[key]
    params = inspect.signature(factory).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ConfigError(f"{key} argument", unknown[0], f"one of {[p for p in params if p != 'self']}")
    if seed is not None:
        check_number("seed", seed, low=0, integer=True)
        check("generator" not in kwargs, "seed", seed, "seed or generator, not both")
        kwargs["generator"] = torch.Generator().manual_seed(int(seed))
    return factory(**kwargs)


def model_summary(model: nn.Module) -> dict:
    """``{"name", "n_parameters", "n_trainable", "n_analog_layers", "n_analog_weights"}`` of ``model``; the
    analog counts are over its Linear / Conv1d / Conv2d layers (weights only, bias excluded)."""
    check(isinstance(model, nn.Module), "model", type(model).__name__, "a torch.nn.Module")
    analog = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d)]
    return {
        "name": getattr(model, "arch", None) or type(model).__name__,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "n_analog_layers": len(analog),
        "n_analog_weights": sum(m.weight.numel() for m in analog),
    }


def _listed(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" (+{len(names) - most} more)" if len(names) > most else "")


def load_weights_file(model: nn.Module, path: str | os.PathLike, field: str = "weights") -> nn.Module:
    """Load the state dict saved at ``path`` into ``model`` (in place), refusing anything that is not one.

    Parameters
    ----------
    model : nn.Module
        The network to load into; its architecture decides which tensors (names and shapes) are expected.
    path : path
        A file written by ``torch.save(model.state_dict())``, or by ``torch.save({"state_dict": ...})``.
        Read with ``weights_only=True`` (tensors and plain containers only; no code runs).
    field : str
        The name the errors give the file (e.g. ``"model.weights"``).

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    ConfigError
        On one line, naming ``field`` and the path: for a file that is not a torch save (e.g. text), a save that
        holds no state dict, or a state dict of another architecture (missing and unexpected tensor names and
        shape mismatches, the first few of each).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: no file {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises KeyError, UnpicklingError, RuntimeError... for non-saves
        first = (str(err).splitlines() or [""])[0][:160]
        raise ConfigError(field, str(path), f"a file written by torch.save(model.state_dict()) (this one is not: "
                                            f"{type(err).__name__}: {first})") from None
    return apply_state_dict(model, blob, field, str(path))


def apply_state_dict(model: nn.Module, blob: object, field: str = "weights", source: str = "") -> nn.Module:
    """Load ``blob`` (a state dict, or a dict with key ``"state_dict"``) into ``model`` in place, after checking
    that it holds exactly the tensors (names and shapes) the architecture has.

    Raises
    ------
    ConfigError
        On one line, naming ``field`` and ``source``: no state dict, or one of another architecture.
    """
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else blob
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())):
        raise ConfigError(field, source, f"a state dict (names -> tensors); the file holds a {type(blob).__name__}")
    expected = model.state_dict()
    arch = getattr(model, "arch", None) or type(model).__name__
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {_listed(names)}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("shape in file vs model", shapes)) if names]
        raise ConfigError(field, source, f"weights of this {arch} ({len(expected)} tensors); the file is of "
                                         f"another architecture ({'; '.join(parts)})")
    model.load_state_dict(state)
    return model
