"""av.chip: instance i of a run as an ordinary nn.Module, equal to instance i of evaluate to round-off."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import anvm_stats as av
from anvm_stats.errors import ConfigError
from tests.helpers import assert_one_line_error, assert_unchanged, make_data, make_mlp, make_resnet, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class PerForwardRead(av.ReadNoise):
    """ReadNoise drawn once per forward on every device (no ``read_sd``: the engine's weight-domain path)."""

    kind: ClassVar[str] = "test_per_forward_read"
    read_sd: ClassVar[None] = None


#: programming noise, an 8-bit ADC, read noise and ADC output noise drawn per MVM
MVM_SPEC = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                           periphery=av.Periphery(adc=av.Quantizer(bits=8), output_noise=0.01))
SPECS = {"paper1": av.devices.paper1(0.1), "adc_read_noise_per_mvm": MVM_SPEC,
         "read_per_forward": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), PerForwardRead(sigma=0.05)))}
NETS = {"mlp": lambda: (make_mlp(sizes=(8, 16, 16, 7)), make_data(n=40, n_classes=7)),
        "resnet": lambda: (make_resnet(), make_data(n=20, shape=(1, 8, 8), n_classes=5))}


def engine_outputs(net, spec, data, instances, **kw):
    """The outputs every instance of ``evaluate`` computed, ``[K, N, ...]`` (a metric that keeps them)."""
    kept = []

    def keep(outputs, targets):
        kept.append(outputs.clone())
        return torch.zeros(outputs.shape[0])

    av.evaluate(net, spec, data, instances=instances, metrics=[av.Metric("keep", keep)], progress=False, **kw)
    K = len(instances)
    return torch.cat([o.view(K, -1, *o.shape[1:]) for o in kept], dim=1)


@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_chip_outputs_equal_instance_i_of_evaluate(net_name, spec_name):
    net, (x, y) = NETS[net_name]()
    spec = SPECS[spec_name]
    per_forward = spec_name == "read_per_forward"
    B = 16
    ref = engine_outputs(net, spec, (x, y), [2, 5], options=av.RunOptions(samples_per_batch=B))
    for r, i in enumerate([2, 5]):
        c = av.chip(net, spec, index=i, calibration_data=(x, y))
        # per-MVM noise is keyed by sample index: any batch sizes; per-forward draws: the engine's batches
        step = B if per_forward else 7
        got = torch.cat([c(x[s:s + step]) for s in range(0, len(x), step)])
        torch.testing.assert_close(got, ref[r], rtol=1e-5, atol=1e-6)
        assert c.next_sample == len(x)


def test_counter_sampler_chip_equals_counter_run():
    net, (x, y) = NETS["mlp"]()
    ref = engine_outputs(net, MVM_SPEC, (x, y), [4], options=av.RunOptions(sampler="counter"))
    c = av.chip(net, MVM_SPEC, index=4, calibration_data=(x, y), sampler="counter")
    torch.testing.assert_close(c(x), ref[0], rtol=1e-5, atol=1e-6)
    other = av.chip(net, MVM_SPEC, index=4, calibration_data=(x, y))        # the generator sampler: another chip
    assert not torch.allclose(other(x), ref[0], atol=1e-3)


def test_read_noise_follows_the_sample_counter():
    net, (x, y) = NETS["mlp"]()
    c = av.chip(net, MVM_SPEC, index=1, calibration_data=(x, y))
    first = c(x)
    again = c(x)                                   # samples N..2N-1: fresh read noise
    assert c.next_sample == 2 * len(x)
    assert not torch.equal(first, again)
    assert torch.equal(c.reset()(x), first)        # back at sample 0: the same reads, bit for bit
    assert torch.equal(c(x[5:9], first_sample=5), first[5:9])
    assert c.next_sample == 9
    quiet = av.chip(net, av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),)), index=1)
    assert torch.equal(quiet(x), quiet(x))         # nothing drawn at read time: every read is the same


def test_chip_is_an_ordinary_module_with_hooks_and_leaves_the_model_alone():
    net, (x, y) = NETS["resnet"]()
    snap = snapshot(net)
    c = av.chip(net, av.devices.paper1(0.1), index=0, seed=3)
    assert isinstance(c, torch.nn.Module) and not c.training
    seen = []
    handle = c.network.get_submodule("fc").register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = c(x)
    handle.remove()
    assert seen == [torch.Size([len(x), 5])] and out.shape == (len(x), 5)
    assert c.layer_names == ["conv1", "conv2", "short", "fc"]
    assert_unchanged(net, snap)
    # a different seed or index is another chip
    assert not torch.allclose(av.chip(net, av.devices.paper1(0.1), index=1, seed=3)(x), out)


@pytest.mark.parametrize("kw, field", [
    (dict(index=-1), "index"), (dict(index=1.5), "index"), (dict(index=True), "index"), (dict(index="2"), "index"),
    (dict(index=2**63), "index"), (dict(index=0, sampler="philox"), "sampler"),
])
def test_bad_arguments_name_the_field(kw, field):
    net, _ = NETS["mlp"]()
    with pytest.raises(ConfigError) as err:
        av.chip(net, av.devices.paper1(0.1), **kw)
    assert_one_line_error(err.value, field, [str(kw.get(field, ""))[:3]])


def test_spec_must_be_a_hardware_spec_and_first_sample_an_index():
    net, (x, _) = NETS["mlp"]()
    with pytest.raises(ConfigError) as err:
        av.chip(net, {"effects": []}, index=0)
    assert_one_line_error(err.value, "spec", ["dict", "HardwareSpec"])
    c = av.chip(net, av.devices.paper1(0.1), index=0)
    with pytest.raises(ConfigError) as err:
        c(x, first_sample=-3)
    assert_one_line_error(err.value, "first_sample", ["-3"])
