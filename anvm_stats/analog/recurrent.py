"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` on a chip: analog input and recurrent matrices, digital gates.

Every layer and direction holds two arrays (:class:`~.layers.AnalogModule`): ``W_ih`` (``G*H x in``, with the
bias ``b_ih`` as its bias column) and ``W_hh`` (``G*H x H``, bias ``b_hh``), ``G`` = 4 gates (LSTM), 3 (GRU) or 1
(RNN). The input matrix reads all time steps of a sequence as tokens (one MVM per time step); the recurrent matrix
is read once per time step on the previous hidden state (``step`` = the time step's index in the direction's
order, so every MVM draws its own read noise). Gate non-linearities and the state updates run digitally in float,
as torch computes them. Supported: any ``num_layers``, ``bidirectional``, ``batch_first`` both ways, ``bias``,
initial states (per sample ``[.., B, H]`` or per instance). Refused with a clear error: ``proj_size > 0``
(:func:`~.selection.crossbars`), ``PackedSequence`` and unbatched inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import UnsupportedLayerError
from .layers import AnalogModule

Tensor = torch.Tensor
#: gates per recurrent mode
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _cell(mode: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One time step from the input part ``gi`` and recurrent part ``gh`` of the gates ``[N, G*H]``."""
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        ir, iz, i_n = gi.chunk(3, dim=-1)
        hr, hz, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None


class AnalogRecurrent(nn.Module):
    """Replacement for one ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (see module docstring); the same forward
    signature and outputs.

    Parameters
    ----------
    source : nn.LSTM, nn.GRU or nn.RNN
    analog : list of AnalogModule
        Its crossbars in the order of :func:`~.selection.crossbars`: for each layer and direction ``ih``, ``hh``.
    """

    def __init__(self, source: nn.RNNBase, analog: list[AnalogModule]):
        super().__init__()
        self.mode = source.mode
        self.name = analog[0].plan.name.rsplit(".", 1)[0]
        self.num_layers, self.hidden_size = source.num_layers, source.hidden_size
        self.batch_first, self.bidirectional = source.batch_first, source.bidirectional
        self.suffixes = ("", "_reverse") if source.bidirectional else ("",)
        it = iter(analog)
        for layer in range(self.num_layers):
            for sfx in self.suffixes:
                self.add_module(f"ih_l{layer}{sfx}", next(it))
                self.add_module(f"hh_l{layer}{sfx}", next(it))

    def extra_repr(self) -> str:
        return (f"{self.mode}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}")

    def _initial(self, hx: Tensor | None, index: int, like: Tensor, hh: AnalogModule) -> Tensor:
        if hx is None:
            return like.new_zeros(like.shape[0], self.hidden_size)
        return hh.per_instance(hx[index])

    def forward(self, input: Tensor, hx=None):
        if isinstance(input, PackedSequence):
            raise UnsupportedLayerError(f"analog {self.mode} {self.name!r}: PackedSequence inputs are not supported; "
                                        f"pass padded [B, T, in] tensors")
        if input.dim() != 3:
            raise UnsupportedLayerError(f"analog {self.mode} {self.name!r}: unbatched input {list(input.shape)}; it "
                                        f"reads batched [B, T, in] (batch_first) or [T, B, in] inputs")
        lstm = self.mode == "LSTM"
        h0, c0 = (hx if hx is not None else (None, None)) if lstm else (hx, None)
        x = input if self.batch_first else input.transpose(0, 1)          # [N, T, in]
        T = x.shape[1]
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self.suffixes):
                ih, hh = getattr(self, f"ih_l{layer}{sfx}"), getattr(self, f"hh_l{layer}{sfx}")
                gi = ih(x)                                                  # [N', T, G*H], one MVM per time step
                index = layer * len(self.suffixes) + d
                h = self._initial(h0, index, gi, hh)
                c = self._initial(c0, index, gi, hh) if lstm else None
                order = range(T - 1, -1, -1) if sfx else range(T)
                ys = [None] * T
                for step, t in enumerate(order):
                    h, c = _cell(self.mode, gi[:, t], hh(h, step=step), h, c)
                    ys[t] = h
                outs.append(torch.stack(ys, dim=1))
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        out = x if self.batch_first else x.transpose(0, 1)
        hn = torch.stack(h_n)
        return (out, (hn, torch.stack(c_n))) if lstm else (out, hn)
