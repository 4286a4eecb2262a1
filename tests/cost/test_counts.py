"""Operation counts of a chip, checked against counts made by hand on tiny networks (untiled and tiled,
differential, bit-sliced and offset mappings, a convolution)."""

import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.cost import count
from anvm_stats.errors import ConfigError

W1 = [[1.0, -1.0, 0.5], [0.0, 0.5, -1.0]]
B1 = [0.5, -0.5]


def tiny_net():
    """Linear 3 -> 2 (hand-picked weights) -> ReLU -> Linear 2 -> 4."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[0].bias.copy_(torch.tensor(B1))
    return net


X = torch.zeros(2, 3)


def counts_of(spec, net=None, x=X):
    return {c.name: c for c in count(net or tiny_net(), spec, x)}


def per_inference(c):
    return dict(mvms=c.mvms, dac=c.mvms * c.dac_conversions, bitlines=c.mvms * c.bitline_reads,
                adc=c.mvms * c.adc_conversions, shift=c.mvms * c.shift_adds, acc=c.mvms * c.accumulations,
                offset=c.mvms * c.offset_ops, cells=c.cells, allocated=c.cells_allocated)


def test_untiled_differential_by_hand():
    # layer 0: rows = 3 inputs + bias row = 4, 2 outputs, 2 arrays (G+, G-), 1 ADC signal per output
    # layer 2: rows = 2 + 1 = 3, 4 outputs
    c = counts_of(av.HardwareSpec())
    assert per_inference(c["0"]) == dict(mvms=1, dac=4, bitlines=4, adc=2, shift=0, acc=0, offset=0, cells=16,
                                         allocated=16)
    assert per_inference(c["2"]) == dict(mvms=1, dac=3, bitlines=8, adc=4, shift=0, acc=0, offset=0, cells=24,
                                         allocated=24)
    # W~ = [W, b/s] with s = half-range(b) / half-range(W) = 0.5: |W~| / max|W~| sums to 3.5 + 2.5
    assert c["0"].conductance == pytest.approx(6.0, abs=1e-6)


def test_tiled_differential_by_hand():
    # tiles of 2 rows x 3 columns: layer 0 has 4 rows -> 2 row blocks, 2 outputs -> 1 column block;
    # layer 2 has 3 rows -> 2 row blocks, 4 outputs -> 2 column blocks
    c = counts_of(av.HardwareSpec(tile=av.Tile(rows=2, cols=3)))
    assert per_inference(c["0"]) == dict(mvms=1, dac=4, bitlines=8, adc=4, shift=0, acc=2, offset=0, cells=16,
                                         allocated=2 * 2 * 1 * 2 * 3)
    assert per_inference(c["2"]) == dict(mvms=1, dac=6, bitlines=16, adc=8, shift=0, acc=4, offset=0, cells=24,
                                         allocated=2 * 2 * 2 * 2 * 3)
    assert (c["0"].row_blocks, c["0"].col_blocks, c["2"].row_blocks, c["2"].col_blocks) == (2, 1, 2, 2)


def test_bit_slices_by_hand():
    # 3 slices: 6 arrays (a differential pair per slice), 3 ADC signals per output, 2 shift-and-adds per output
    spec = av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=3, bits_per_slice=2))
    c = counts_of(spec)
    assert per_inference(c["0"]) == dict(mvms=1, dac=4, bitlines=12, adc=6, shift=4, acc=0, offset=0, cells=48,
                                         allocated=48)
    c = counts_of(av.HardwareSpec(mapping=spec.mapping, tile=av.Tile(rows=2, cols=3)))
    # 2 row blocks: every block's 3 slices are digitised (12) and recombined (2 x 2 per block), blocks summed (2)
    assert per_inference(c["0"]) == dict(mvms=1, dac=4, bitlines=24, adc=12, shift=8, acc=2, offset=0, cells=48,
                                         allocated=6 * 2 * 1 * 2 * 3)


def test_offset_mapping_by_hand():
    # one array; the digital offset needs sum(x) (3 adds over 4 rows) and one multiply-add per output (2)
    c = counts_of(av.HardwareSpec(mapping=av.OffsetMapping()))
    assert per_inference(c["0"]) == dict(mvms=1, dac=4, bitlines=2, adc=2, shift=0, acc=0, offset=5, cells=8,
                                         allocated=8)
    # on 2-row tiles: sum(x) per row block (1 + 1 adds), one multiply-add per output and block (4)
    c = counts_of(av.HardwareSpec(mapping=av.OffsetMapping(), tile=av.Tile(rows=2, cols=3)))
    assert per_inference(c["0"])["offset"] == 6


def test_digital_bias_has_no_bias_row():
    c = counts_of(av.HardwareSpec(bias="digital"))
    assert (c["0"].n_rows, c["0"].cells, per_inference(c["0"])["dac"]) == (3, 12, 3)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_counts_one_mvm_per_output_pixel():
    # 3x3 input, 2x2 kernel, padding 1: a 4x4 output = 16 MVMs of 1*2*2 + 1 = 5 rows and 2 outputs
    torch.manual_seed(0)
    c = counts_of(av.HardwareSpec(), ConvNet(), torch.zeros(1, 1, 3, 3))
    assert per_inference(c["conv"]) == dict(mvms=16, dac=80, bitlines=64, adc=32, shift=0, acc=0, offset=0,
                                            cells=20, allocated=20)
    assert per_inference(c["fc"]) == dict(mvms=1, dac=33, bitlines=6, adc=3, shift=0, acc=0, offset=0,
                                          cells=2 * 3 * 33, allocated=2 * 3 * 33)
    # tiled: 2-row tiles split the 5 rows into 3 row blocks; every pixel's MVM runs on all of them
    c = counts_of(av.HardwareSpec(tile=av.Tile(rows=2, cols=2)), ConvNet(), torch.zeros(1, 1, 3, 3))
    assert per_inference(c["conv"])["adc"] == 16 * 3 * 2 and per_inference(c["conv"])["acc"] == 16 * 2 * 2


def test_counts_come_from_a_given_program_and_refuse_other_objects():
    net = tiny_net()
    prog = av.prepare(net, av.HardwareSpec(tile=av.Tile(rows=2, cols=3)))
    c = {x.name: x for x in count(net, av.HardwareSpec(), X, program=prog)}
    assert c["0"].row_blocks == 2          # the program's tiles, not the (untiled) spec's
    with pytest.raises(ConfigError, match="spec"):
        count(net, "chip", X)
