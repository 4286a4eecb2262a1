"""anvm_stats.analog.recurrent: nn.LSTM / nn.GRU / nn.RNN with analog input and recurrent matrices equal the float
modules on an ideal chip and the float module holding one chip's weights under weight noise; read noise is drawn
per time step, the same whatever the batch size; what has no analog form is refused by name."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import anvm_stats as av
from anvm_stats.errors import UnsupportedLayerError
from tests.helpers import reference_any

NOISY = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),))


class Seq(nn.Module):
    """A 2-layer recurrent classifier reading batch-first data (the module itself may be sequence-first)."""

    def __init__(self, cls=nn.LSTM, bidirectional=False, batch_first=True, classes=3):
        super().__init__()
        torch.manual_seed(5)
        self.rnn = cls(5, 6, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(6 * (2 if bidirectional else 1), classes)

    def forward(self, x):
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        out, state = self.rnn(x)
        last = out[:, -1] if self.rnn.batch_first else out[-1]
        h = state[0] if isinstance(state, tuple) else state
        return torch.cat([self.head(last), h.transpose(0, 1).flatten(1)], dim=1)


def run(program, g, x):
    program.load(g, B=x.shape[0])
    try:
        with torch.no_grad():
            return program.module(x).view(g.shape[0], x.shape[0], -1)
    finally:
        program.unload()


CASES = [(cls, bi, bf) for cls in (nn.LSTM, nn.GRU) for bi in (False, True) for bf in (True, False)]


@pytest.mark.parametrize("cls,bidirectional,batch_first", CASES)
def test_recurrent_layers_equal_torch_on_an_ideal_chip_and_each_chip_under_weight_noise(cls, bidirectional,
                                                                                       batch_first):
    net = Seq(cls, bidirectional, batch_first).eval()
    x = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(1))
    prog = av.prepare(net, av.devices.ideal())
    dirs = ("", "_reverse") if bidirectional else ("",)
    assert prog.layer_names == [f"rnn.{k}_l{i}{s}" for i in range(2) for s in dirs for k in ("ih", "hh")] + ["head"]
    with torch.no_grad():
        ref = net(x)
    out = run(prog, prog.g0[None].repeat(3, 1), x)
    assert torch.allclose(out, ref.expand_as(out), atol=1e-5)
    noisy = av.prepare(net, NOISY)
    chips = av.ChipSampler(noisy, 2).chips([0, 1, 2], NOISY)
    out = run(noisy, chips, x)
    for k in range(3):
        with torch.no_grad():
            assert torch.allclose(out[k], reference_any(net, noisy, chips[k])(x), atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_initial_states_per_sample_are_repeated_for_every_chip():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.rnn = nn.LSTM(3, 4, batch_first=True)

        def forward(self, x):
            h0 = x[:, 0, :1].expand(-1, 4).unsqueeze(0).contiguous()
            return self.rnn(x, (h0, 2 * h0))[0].flatten(1)

    net = WithState().eval()
    x = torch.randn(3, 5, 3)
    prog = av.prepare(net, av.devices.ideal())
    out = run(prog, prog.g0[None].repeat(2, 1), x)
    with torch.no_grad():
        assert torch.allclose(out, net(x).expand_as(out), atol=1e-5)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_read_noise_per_time_step_is_the_same_whatever_the_batch_size(cls):
    net = Seq(cls, bidirectional=True).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 7, 5, generator=g)
    with torch.no_grad():
        y = net(x)[:, :3].argmax(1)

    class Head(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)[:, :3]

    spec = av.HardwareSpec(effects=(av.ReadNoise(sigma=0.1),))
    runs = [av.evaluate(Head(net), spec, (x, y), n_instances=5, seed=1, progress=False,
                        options=av.RunOptions(samples_per_batch=spb)) for spb in (None, 1, 7)]
    counts = runs[0].correct_count.values
    assert (counts < len(y)).any()
    for other in runs[1:]:
        assert (other.correct_count.values == counts).all()
        assert other.loss.values == pytest.approx(runs[0].loss.values, rel=1e-5)


def test_recurrent_options_without_an_analog_form_are_refused_by_name():
    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 4, proj_size=2, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    with pytest.raises(UnsupportedLayerError, match="'rnn'.*proj_size=2"):
        av.prepare(Proj(), av.devices.ideal())

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            packed = pack_padded_sequence(x, torch.full((x.shape[0],), x.shape[1]), batch_first=True)
            return self.rnn(packed)[1][0]

    prog = av.prepare(Packed(), av.devices.ideal())
    with pytest.raises(UnsupportedLayerError, match="'rnn'.*PackedSequence"):
        run(prog, prog.g0[None], torch.randn(2, 4, 3))


def test_converter_ranges_of_a_recurrent_matrix_cover_every_time_step():
    from anvm_stats.hardware.periphery import calibrate_range

    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=True).eval()

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    x = torch.randn(16, 6, 3)
    spec = av.HardwareSpec(periphery=av.Periphery(dac=av.Quantizer(bits=8, percentile=99.0),
                                                  adc=av.Quantizer(bits=8, percentile=99.0)))
    prog = av.prepare(One(), spec, calibration_data=x)
    hh = prog.module.get_submodule("rnn.hh_l0")
    inputs = []                                                  # what the recurrent matrix reads at each step
    hook = hh.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    prog.load(prog.g0[None], B=16, dac_levels=256, adc_levels=256, calibrating=True)   # as prepare calibrates
    with torch.no_grad():
        prog.module(x)
    prog.unload()
    hook.remove()
    assert len(inputs) == 6
    ranges = [calibrate_range(v, 99.0) for v in inputs]
    assert hh.dac_range == pytest.approx((min(r[0] for r in ranges), max(r[1] for r in ranges)))
    assert hh.dac_range != pytest.approx(ranges[-1])             # not only the last step's range
