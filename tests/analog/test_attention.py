"""anvm_stats.analog.attention: nn.MultiheadAttention (and so nn.TransformerEncoderLayer) with analog projections
equals the float module on an ideal chip, matches the float module holding one chip's weights under weight noise,
and draws per-token read noise independent of the batch size."""

import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.errors import UnsupportedLayerError
from tests.helpers import reference_any

NOISY = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),))


class Classifier(nn.Module):
    """Token ids -> embedding + learned positions -> one transformer encoder layer -> mean pool -> classes."""

    def __init__(self, batch_first=True, vocab=11, d=16, heads=4, length=6, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first = batch_first
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        self.enc = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=batch_first)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        h = self.emb(ids) + self.pos
        h = self.enc(h) if self.batch_first else self.enc(h.transpose(0, 1)).transpose(0, 1)
        return self.head(h.mean(1))


def token_data(n=40, vocab=11, length=6, seed=1, net=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if net is None else net.eval()(ids).argmax(1)
    return ids, y


class Attend(nn.Module):
    """Cross-attention with masks, returning the attention weights too (need_weights=True)."""

    def __init__(self, kdim=None, batch_first=True):
        super().__init__()
        torch.manual_seed(3)
        self.attn = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=batch_first)

    def forward(self, q, kv, pad, causal):
        if not self.attn.batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        out, w = self.attn(q, kv, kv, key_padding_mask=pad, attn_mask=causal)
        if not self.attn.batch_first:
            out = out.transpose(0, 1)
        return torch.cat([out.flatten(1), w.flatten(1)], dim=1)


def run(program, g, *args):
    B = args[0].shape[0]
    program.load(g, B=B)
    try:
        with torch.no_grad():
            return program.module(*args).view(g.shape[0], B, -1)
    finally:
        program.unload()


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_classifier_counts_equal_the_float_model_on_an_ideal_chip(batch_first):
    net = Classifier(batch_first).eval()
    ids, y = token_data()
    y = y.clone()
    y[::3] = (y[::3] + 1) % 3                 # some wrong answers, so equality of counts is not trivial
    float_correct = int((net(ids).argmax(1) == y).sum())
    ds = av.evaluate(net, av.devices.ideal(), (ids, y), n_instances=3, progress=False, digital=[""])
    assert ds.attrs["analog_layers"] == "enc.self_attn.in_proj,enc.self_attn.out_proj,enc.linear1,enc.linear2,head"
    assert (ds.correct_count.values == float_correct).all()
    with torch.no_grad():
        ref_loss = float(nn.functional.cross_entropy(net(ids), y))
    assert ds.loss.values == pytest.approx(ref_loss, abs=1e-5)


def test_transformer_noise_changes_counts_deterministically_whatever_the_batch_size():
    net = Classifier().eval()
    ids, y = token_data(net=net)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.1), av.ReadNoise(sigma=0.1)))
    runs = [av.evaluate(net, spec, (ids, y), n_instances=6, seed=4, progress=False, digital=[""],
                        options=av.RunOptions(samples_per_batch=spb)) for spb in (None, 1, 7)]
    counts = runs[0].correct_count.values
    assert (counts < len(y)).any()            # the noise costs accuracy against the float model's answers
    for other in runs[1:]:
        assert (other.correct_count.values == counts).all()
        assert other.loss.values == pytest.approx(runs[0].loss.values, rel=1e-5)
    again = av.evaluate(net, spec, (ids, y), n_instances=6, seed=4, progress=False, digital=[""])
    assert (again.correct_count.values == counts).all()


@pytest.mark.parametrize("kdim,batch_first", [(None, True), (None, False), (6, True)])
def test_attention_equals_the_float_module_with_masks_and_weights(kdim, batch_first):
    net = Attend(kdim, batch_first).eval()
    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(5, 4, 8, generator=g), torch.randn(5, 7, kdim or 8, generator=g)
    pad = torch.zeros(5, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pad[3, 2:] = True
    causal = torch.triu(torch.ones(4, 7, dtype=torch.bool), diagonal=3)
    prog = av.prepare(net, av.devices.ideal())
    names = ["attn.in_proj"] if kdim is None else ["attn.q_proj", "attn.k_proj", "attn.v_proj"]
    assert prog.layer_names == names + ["attn.out_proj"]
    out = run(prog, prog.g0[None].repeat(3, 1), q, kv, pad, causal)
    with torch.no_grad():
        ref = net(q, kv, pad, causal)
    assert torch.allclose(out, ref.expand_as(out), atol=1e-5)
    noisy = av.prepare(net, NOISY)
    chips = av.ChipSampler(noisy, 2).chips([0, 1, 2], NOISY)
    out = run(noisy, chips, q, kv, pad, causal)
    for k in range(3):
        with torch.no_grad():
            ref = reference_any(net, noisy, chips[k])(q, kv, pad, causal)
        assert torch.allclose(out[k], ref, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_attention_options_without_an_analog_form_are_refused_by_name():
    class BiasKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    with pytest.raises(UnsupportedLayerError, match="'attn'.*add_bias_kv=True"):
        av.prepare(BiasKV(), av.devices.ideal())
    with pytest.raises(UnsupportedLayerError, match="part of MultiheadAttention 'attn'"):
        av.prepare(BiasKV(), av.devices.ideal(), layers=["attn.out_proj"])


class Stack(nn.Module):
    """nn.TransformerEncoder (2 layers) with a key padding mask from the ids, masked mean pooling, and an
    nn.TransformerDecoderLayer attending to the encoder's output (cross-attention)."""

    def __init__(self, vocab=11, d=16, heads=2, classes=3):
        super().__init__()
        torch.manual_seed(8)
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 32, dropout=0.0, batch_first=True),
                                         num_layers=2)
        self.dec = nn.TransformerDecoderLayer(d, heads, 32, dropout=0.0, batch_first=True)
        self.query = nn.Embedding(2, d)
        self.head = nn.Linear(2 * d, classes)

    def forward(self, ids):
        pad = ids == 0
        mem = self.enc(self.emb(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        pooled = (mem * keep).sum(1) / keep.sum(1)
        q = self.query.weight.unsqueeze(0).expand(ids.shape[0], -1, -1)
        out = self.dec(q, mem, memory_key_padding_mask=pad)
        return self.head(torch.cat([pooled, out[:, 0]], dim=1))


def test_encoder_stack_with_padding_and_a_decoder_layer_equal_the_float_model():
    net = Stack().eval()
    ids, _ = token_data(n=12)
    ids[::2, 4:] = 0                                   # padded sequences
    ids[:, 0] = 1
    prog = av.prepare(net, av.devices.ideal(), digital=["query"])
    assert "dec.multihead_attn.in_proj" in prog.layer_names and "enc.layers.1.self_attn.in_proj" in prog.layer_names
    prog.input(ids)
    out = run(prog, prog.g0[None].repeat(3, 1), ids)
    with torch.no_grad():
        ref = net(ids)
    assert torch.allclose(out, ref.expand_as(out), atol=1e-5)
    noisy = av.prepare(net, NOISY, digital=["query"])
    noisy.input(ids)
    chips = av.ChipSampler(noisy, 1).chips([0, 1], NOISY)
    out = run(noisy, chips, ids)
    for k in range(2):
        with torch.no_grad():
            assert torch.allclose(out[k], reference_any(net, noisy, chips[k])(ids), atol=1e-5)


def test_the_relu_of_a_transformer_layer_runs_inside_its_analog_linear1_when_fused():
    net = Classifier().eval()
    ids, _ = token_data(n=6)
    prog = av.prepare(net, NOISY, fuse_relu=True, digital=[""])
    assert prog.module.enc.linear1.relu_after and isinstance(prog.module.enc.activation, nn.Identity)
    assert net.enc.activation is nn.functional.relu                # the user's model is untouched
    plain = av.prepare(net, NOISY, digital=[""])
    prog.input(ids), plain.input(ids)          # the inputs must be repeated per chip (the residual adds)
    chips = av.ChipSampler(plain, 0).chips([0, 1], NOISY)
    assert torch.equal(run(prog, chips, ids), run(plain, chips, ids))
