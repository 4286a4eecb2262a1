"""Monte Carlo engine: determinism, chunk/order invariance, common random numbers, Dataset schema."""

import numpy as np
import pytest
import torch
import xarray as xr

import anvm_stats as av
from anvm_stats import chunking
from anvm_stats import dims
from anvm_stats.errors import ConfigError
from tests.helpers import cuda_data, CUDA_SPECS, make_data, make_mlp, make_resnet


def data_vars(ds):
    return ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds.assign_attrs({})


OPTION_KEYS = ("instances_per_chunk", "samples_per_batch", "memory_budget", "sampler", "precision")


def run(net, spec, data, **kw):
    """``av.sweep`` without a progress bar, RunOptions fields given as keywords."""
    kw.setdefault("progress", False)
    opts = {k: kw.pop(k) for k in OPTION_KEYS if k in kw}
    if opts:
        kw["options"] = av.RunOptions(**opts)
    return av.sweep(net, spec, data, **kw)


@pytest.fixture(scope="module")
def setup():
    net = make_mlp(sizes=(8, 16, 16, 7))
    return net, make_data(n=40, n_classes=7)


def test_same_seed_same_dataset_and_chunking_does_not_matter(setup):
    net, data = setup
    spec = av.devices.paper1(0.2)
    a = run(net, spec, data, n_instances=9, seed=11)
    b = run(net, spec, data, n_instances=9, seed=11, instances_per_chunk=2, samples_per_batch=7)
    c = run(net, spec, data, n_instances=9, seed=11, instances_per_chunk=1)
    xr.testing.assert_allclose(data_vars(a), data_vars(b))     # another batch size: equal to round-off
    xr.testing.assert_identical(data_vars(a), data_vars(c))
    assert a.accuracy.std() > 0
    d = run(net, spec, data, n_instances=9, seed=12)
    assert not np.array_equal(a.correct_count.values, d.correct_count.values)


def test_instance_i_depends_only_on_seed_and_i(setup):
    net, data = setup
    spec = av.devices.paper1(0.2)
    full = run(net, spec, data, n_instances=8, seed=3)
    halves = xr.concat([run(net, spec, data, instances=[4, 5, 6, 7], seed=3),
                        run(net, spec, data, instances=[3, 0, 2, 1], seed=3)], dims.INSTANCE).sortby(dims.INSTANCE)
    xr.testing.assert_identical(data_vars(full), data_vars(halves))


def test_sweep_points_share_chips(setup):
    net, data = setup
    base = av.devices.paper1(0.1)
    sw = run(net, base, data, grid={"noise_level": [0.0, 0.1, 0.3]}, n_instances=6, seed=2)
    assert sw.accuracy.dims == (dims.NOISE_LEVEL, dims.INSTANCE)
    single = run(net, av.devices.paper1(0.3), data, n_instances=6, seed=2)
    xr.testing.assert_allclose(data_vars(sw.sel(noise_level=0.3, drop=True)), data_vars(single))
    clean = sw.sel(noise_level=0.0)
    float_acc = float((net(data[0]).argmax(1) == data[1]).float().mean())
    assert np.allclose(clean.accuracy, float_acc)
    assert (sw.accuracy.sel(noise_level=0.3).mean() < sw.accuracy.sel(noise_level=0.0).mean())


def test_multi_axis_sweep_with_adc_and_faults():
    net = make_resnet()
    x, _ = make_data(n=20, shape=(1, 6, 6), n_classes=5)
    y = net(x).argmax(1)      # labels the float net gets right: hardware errors can only lower accuracy
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.02), av.StuckAt(p_off=0.01)),
                           periphery=av.Periphery(adc=av.Quantizer(bits=8)))
    ds = run(net, spec, (x, y), grid={"adc_bits": [2, 8], "stuck_at_rate": [0.0, 0.2]}, n_instances=4, seed=0)
    assert set(ds.accuracy.dims) == {dims.ADC_BITS, dims.STUCK_AT_RATE, dims.INSTANCE}
    assert dims.TOP5_ACCURACY not in ds     # 5 classes: top-5 is trivially 1
    good, bad = ds.accuracy.sel(adc_bits=8, stuck_at_rate=0.0), ds.accuracy.sel(adc_bits=2, stuck_at_rate=0.2)
    assert float(good.mean()) > 0.8 and float(good.mean()) > float(bad.mean())


def test_dataset_schema_and_provenance(setup):
    net, data = setup
    ds = run(net, av.devices.paper1(0.1), data, n_instances=3, seed=0)
    dims.validate_dataset(ds)
    assert set(dims.METRICS) <= set(ds.data_vars)
    assert ds.correct_count.dtype == np.int64
    assert np.allclose(ds.accuracy, ds.correct_count / 40)
    assert ds.top5_accuracy.min() >= ds.accuracy.min()
    assert av.HardwareSpec.from_dict(__import__("json").loads(ds.attrs["hardware_spec"])) == av.devices.paper1(0.1)
    assert ds.attrs["seed_entropy"] == "0" and "Sequential" in ds.attrs["model"]


def test_fresh_seed_is_recorded_and_reproducible(setup):
    net, data = setup
    spec = av.devices.paper1(0.3)
    a = run(net, spec, data, n_instances=3, seed=None)
    b = run(net, spec, data, n_instances=3, seed=int(a.attrs["seed_entropy"]))
    xr.testing.assert_identical(data_vars(a), data_vars(b))


def test_read_noise_runs_are_reproducible(setup):
    net, data = setup
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                           periphery=av.Periphery(output_noise=0.01))
    a = run(net, spec, data, n_instances=4, seed=1, samples_per_batch=10, calibration_data=data[0])
    b = run(net, spec, data, n_instances=4, seed=1, samples_per_batch=10, instances_per_chunk=1,
            calibration_data=data[0])
    xr.testing.assert_allclose(data_vars(a), data_vars(b))


@pytest.mark.parametrize("kw,field", [
    (dict(grid={"sigma": [0.1]}), "grid.sigma"),
    (dict(grid={"noise_level": []}), "grid.noise_level"),
    (dict(n_instances=0), "n_instances"),
    (dict(instances=[1, 1]), "instances"),
    (dict(seed=-3), "seed"),
    (dict(instances_per_chunk=0), "RunOptions.instances_per_chunk"),
    (dict(samples_per_batch=0), "RunOptions.samples_per_batch"),
    (dict(precision="fp16"), "RunOptions.precision"),
    (dict(options={"instances_per_chunk": 2}), "options"),
    (dict(executor="dask"), "executor"),
])
def test_bad_run_arguments(setup, kw, field):
    net, data = setup
    kw.setdefault("n_instances", 2)
    with pytest.raises(ConfigError) as info:
        run(net, av.devices.paper1(0.1), data, **kw)
    assert info.value.field == field


def test_dataloader_style_batches(setup):
    net, (x, y) = setup
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    a = run(net, av.devices.paper1(0.1), batches, n_instances=3, seed=0)
    b = run(net, av.devices.paper1(0.1), (x, y), n_instances=3, seed=0)
    xr.testing.assert_allclose(data_vars(a), data_vars(b))


def test_metrics_follow_argmax_on_ties_and_nan():
    from anvm_stats.montecarlo import _metrics_update

    logits = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 0.0, 0.0],      # tie: argmax = 0
                            [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],      # tie, true class 1 loses to class 0
                            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # all tied: argmax = 0, true 3 has rank 3
                            [float("nan"), 5.0, 0.0, 0.0, 0.0, 0.0],
                            [1.0, float("nan"), 0.0, 0.0, 0.0, 0.0]]])
    y = torch.tensor([0, 1, 3, 1, 1])
    acc = {k: torch.zeros(1, dtype=torch.float64) for k in ("correct", "top5", "loss")}
    _metrics_update(acc, logits.transpose(1, 2).contiguous(), y)      # class-major [K, C, B]
    finite = torch.isfinite(logits[0]).all(-1)
    expected = ((logits[0].argmax(-1) == y) & finite).sum()    # argmax, but a NaN output is never correct
    assert int(acc["correct"]) == int(expected) == 1
    assert int(acc["top5"]) == 4      # the NaN true logit is never in the top 5


@pytest.mark.parametrize("special", ["ties", "inf", "nan"])
def test_metrics_rank_matches_a_direct_count(special):
    """Top-1/top-5 counts equal a direct count of the classes ranked before the true one (larger, or equal at a
    smaller index, or NaN), on integer logits full of ties, with infinities or NaNs mixed in."""
    from anvm_stats.montecarlo import _metrics_update

    g = torch.Generator().manual_seed(3)
    K, C, B = 5, 7, 300
    logits = torch.randint(-2, 3, (K, C, B), generator=g).float()
    odd = torch.rand(K, C, B, generator=g) < 0.05
    if special != "ties":
        logits[odd] = float("nan") if special == "nan" else float("inf")
        logits[torch.rand(K, C, B, generator=g) < 0.05] = -float("inf")
    y = torch.randint(0, C, (B,), generator=g)
    acc = {k: torch.zeros(K, dtype=torch.float64) for k in ("correct", "top5", "loss")}
    _metrics_update(acc, logits, y)
    lg, t = logits.numpy(), logits.gather(1, y.view(1, 1, B).expand(K, 1, B)).numpy()
    earlier = (np.arange(C)[None, :, None] < y.numpy()[None, None, :])
    rank = ((lg > t) | ((lg == t) & earlier) | np.isnan(lg)).sum(1)
    rank[np.isnan(t[:, 0])] = C
    np.testing.assert_array_equal(acc["correct"].numpy(), (rank == 0).sum(1))
    np.testing.assert_array_equal(acc["top5"].numpy(), (rank < 5).sum(1))


def test_narrow_output_layers_keep_chunk_invariance(monkeypatch):
    """A last layer with few outputs runs as W x^T (analog.kernels.narrow_output); chunk sizes whose last chunk
    holds one instance, halves, and the default chunking all give identical results, equal to the x W^T path up
    to round-off."""
    from anvm_stats.analog import kernels

    net = make_mlp(sizes=(8, 32, 5), bn=False)
    data = make_data(n=64, n_classes=5)
    spec = av.devices.paper1(0.2)
    # the generic kernel (batched GEMMs, CUDA's path), here on the CPU
    program = av.prepare(net, spec, calibration_data=data, fuse_relu=True, kernel=kernels.GenericKernel())
    calls = []
    original = kernels.narrow_output
    monkeypatch.setattr(kernels, "narrow_output", lambda *a: calls.append(a[1].shape[0]) or original(*a))
    ref = run(net, spec, data, n_instances=7, seed=4, program=program)
    for chunk in (1, 3, 6):
        xr.testing.assert_identical(data_vars(ref), data_vars(run(net, spec, data, n_instances=7, seed=4,
                                                                  instances_per_chunk=chunk, program=program)))
    assert 1 in calls and max(calls) > 1
    program.use_kernel(kernels.GenericKernel(narrow_outputs=0))
    calls.clear()
    wide = run(net, spec, data, n_instances=7, seed=4, program=program)
    assert not calls
    np.testing.assert_allclose(wide.loss.values, ref.loss.values, rtol=1e-5)


@pytest.mark.parametrize("onednn", [True, False])
def test_linear_paths_are_chunk_invariant_and_agree(onednn):
    """Both CPU linear paths (per-instance oneDNN 1x1 convolutions, batched MKL GEMMs) give results independent
    of the chunk size, and agree with each other to round-off."""
    from anvm_stats.analog.kernels import GenericKernel, OneDNNKernel

    net = make_mlp(sizes=(8, 24, 24, 6), bn=True)
    data = make_data(n=50, n_classes=6)
    spec = av.devices.paper1(0.1)
    kernel, other_kernel = (OneDNNKernel(), GenericKernel()) if onednn else (GenericKernel(), OneDNNKernel())
    program = av.prepare(net, spec, calibration_data=data, fuse_relu=True, kernel=kernel)
    ref = run(net, spec, data, n_instances=7, seed=9, program=program)
    for chunk in (1, 2, 5):
        xr.testing.assert_identical(data_vars(ref), data_vars(run(net, spec, data, n_instances=7, seed=9,
                                                                  instances_per_chunk=chunk, program=program)))
    program.use_kernel(other_kernel)
    other = run(net, spec, data, n_instances=7, seed=9, program=program)
    np.testing.assert_allclose(other.loss.values, ref.loss.values, rtol=1e-5)


def test_sample_major_runs_fixed_chunks_and_matches_the_instance_major_path(monkeypatch):
    """Linear-only programs on CPU fold activations sample-major in forwards of exactly SAMPLE_MAJOR_INSTANCES
    instances (short chunks padded): every chunking gives identical results, equal to the instance-major path up
    to round-off; a hook on an analog layer turns the fold off."""
    from anvm_stats.analog import kernels

    net = make_mlp(sizes=(8, 24, 5), bn=False)
    data = make_data(n=48, n_classes=5)                     # 5 outputs, 48 samples: the narrow W x^T path too
    spec = av.devices.paper1(0.15)
    seen = []
    original = kernels.onednn_linear
    monkeypatch.setattr(kernels, "onednn_linear", lambda *a: seen.append((a[4], a[6], a[7])) or original(*a))
    ref = run(net, spec, data, n_instances=21, seed=2)
    # K=1 calls: shape probes and the nominal product of the first layer (anvm_stats.analog.lazy)
    assert {k for k, sm, _ in seen if sm} == {chunking.SAMPLE_MAJOR_INSTANCES, 1}
    assert any(sm and nar for _, sm, nar in seen)
    for chunk in (1, 5, 16, 21):
        xr.testing.assert_identical(data_vars(ref), data_vars(run(net, spec, data, n_instances=21, seed=2,
                                                                  instances_per_chunk=chunk)))
    program = av.prepare(net, spec, fuse_relu=True)
    assert program.sample_major_ok
    handle = program.analog_modules()[0].register_forward_hook(lambda m, i, o: None)
    assert not program.sample_major_ok
    seen.clear()
    instance_major = run(net, spec, data, n_instances=21, seed=2, program=program)
    handle.remove()
    assert any(k > 1 for k, _, _ in seen) and not any(sm for _, sm, _ in seen)
    np.testing.assert_allclose(instance_major.loss.values, ref.loss.values, rtol=1e-5)
    assert np.abs(instance_major.correct_count.values - ref.correct_count.values).max() <= 1


@pytest.mark.parametrize("spec", [
    av.devices.xiao_state_independent(0.05, proportional=False, adc_bits=6),                      # offset mapping + ADC
    av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=2, bits_per_slice=4),
                    effects=(av.ProgrammingNoise(sigma=0.02),),
                    periphery=av.Periphery(dac=av.Quantizer(bits=6), adc=av.Quantizer(bits=8))),
], ids=["offset-adc", "bitsliced-dac-adc"])
def test_sample_major_fold_agrees_with_instance_major_through_converters(spec):
    """Signals mode (ADC per signal, digital offsets from input sums, slices) gives the same chips' metrics
    whichever way the activations are folded."""
    net = make_mlp(sizes=(8, 24, 24, 5), bn=True)
    data = make_data(n=48, n_classes=5)
    program = av.prepare(net, spec, calibration_data=data, fuse_relu=True)
    assert program.sample_major_ok
    sample_major = run(net, spec, data, n_instances=18, seed=4, program=program)
    handle = program.analog_modules()[-1].register_forward_hook(lambda m, i, o: None)
    try:
        instance_major = run(net, spec, data, n_instances=18, seed=4, program=program)
    finally:
        handle.remove()
    np.testing.assert_allclose(sample_major.loss.values, instance_major.loss.values, rtol=1e-4)
    assert np.abs(sample_major.correct_count.values - instance_major.correct_count.values).max() <= 1
    assert sample_major.accuracy.std() > 0


def test_cuda_conv_networks_with_large_activations_run_one_instance_per_chunk():
    """The CUDA chunking rule, checked without a GPU (the memory budget is given, so no device is queried)."""
    from types import SimpleNamespace

    def prog(device, op):
        return SimpleNamespace(device=torch.device(device), plans=[SimpleNamespace(op=op)], n_devices=1000)

    big, small = (500, -(-chunking.CUDA_SOLO_FLOATS // 500)), (8, 64)
    assert chunking.instances_per_chunk(prog("cuda", "conv2d"), None, 1 << 34, 100, *big, 2) == 1
    assert chunking.instances_per_chunk(prog("cuda", "conv2d"), None, 1 << 34, 100, *small, 2) == 100
    assert chunking.instances_per_chunk(prog("cuda", "linear"), None, 1 << 34, 100, *big, 2) > 1
    assert chunking.instances_per_chunk(prog("cuda", "conv2d"), 7, None, 100, *big, 2) == 7


def test_conv_chunks_of_one_chip_match_larger_chunks():
    """A chunk of one chip runs its grouped convolutions as a batch of two (a one-group convolution is another
    kernel with other round-off): losses are bitwise the same for every chunk size."""
    net = make_resnet()
    x, y = make_data(n=8, shape=(1, 8, 8))
    kw = dict(grid={"noise_level": [0.05, 0.1]}, n_instances=5, seed=2)
    ref = run(net, av.devices.paper1(0.1), [(x, y), (x, y)], **kw)
    for chunk in (1, 2):
        got = run(net, av.devices.paper1(0.1), [(x, y), (x, y)], instances_per_chunk=chunk, **kw)
        np.testing.assert_array_equal(got.loss.values, ref.loss.values)


def test_calibration_data_is_recorded_and_defaults_to_the_evaluation_data(setup):
    net, (x, y) = setup
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),),
                           periphery=av.Periphery(dac=av.Quantizer(bits=4), adc=av.Quantizer(bits=4)))
    default = run(net, spec, (x, y), n_instances=3)
    explicit = run(net, spec, (x, y), n_instances=3, calibration_data=(x, y))
    other = run(net, spec, (x, y), n_instances=3, calibration_data=(x[:8], y[:8]))
    assert default.attrs["calibration_data"] == "evaluation data"
    assert explicit.attrs["calibration_data"].startswith("tensors (40")
    assert other.attrs["calibration_data"].startswith("tensors (8")
    xr.testing.assert_identical(data_vars(default), data_vars(explicit))
    assert not np.array_equal(default.loss.values, other.loss.values)


def test_seed_defaults_to_zero(setup):
    net, data = setup
    spec = av.devices.paper1(0.2)
    xr.testing.assert_identical(data_vars(run(net, spec, data, n_instances=3)),
                                data_vars(run(net, spec, data, n_instances=3, seed=0)))
    xr.testing.assert_identical(data_vars(av.evaluate(net, spec, data, n_instances=3, progress=False)),
                                data_vars(run(net, spec, data, n_instances=3, seed=0)))


@pytest.mark.parametrize("knob,values", [("adc_levels", [3, 9]), ("dac_levels", [4, 17]),
                                         ("mean_shift", [-0.02, 0.0, 0.03])])
def test_converter_levels_and_mean_shift_are_sweep_knobs(setup, knob, values):
    """Every knob of HardwareSpec.with_knobs is a grid dim of av.sweep; a grid point equals the run of the spec
    with that knob set on the same program (same converter ranges)."""
    net, data = setup
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.03),),
                           periphery=av.Periphery(dac=av.Quantizer(bits=6), adc=av.Quantizer(bits=6)))
    program = av.prepare(net, spec, calibration_data=data, fuse_relu=True)
    ds = run(net, spec, data, grid={knob: values}, n_instances=4, seed=1, program=program)
    assert ds.accuracy.dims == (knob, dims.INSTANCE)
    for v in values:
        alone = run(net, spec.with_knobs(**{knob: v}), data, n_instances=4, seed=1, program=program)
        np.testing.assert_allclose(ds.loss.sel({knob: v}).values, alone.loss.values, rtol=1e-6)
    assert len({float(ds.loss.sel({knob: v}).mean()) for v in values}) == len(values)


def test_spec_knobs_set_levels_and_mean():
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.03),),
                           periphery=av.Periphery(adc=av.Quantizer(bits=6)))
    s = spec.with_knobs(adc_levels=5, mean_shift=0.01)
    assert s.periphery.adc.n_levels == 5 and s.effects[0].mu == 0.01
    with pytest.raises(ConfigError, match="dac_levels"):
        spec.with_knobs(dac_levels=4)                       # no DAC
    with pytest.raises(ConfigError, match="adc_levels"):
        spec.with_knobs(adc_levels=1)
    with pytest.raises(ConfigError, match="mean_shift"):
        av.devices.ideal().with_knobs(mean_shift=0.1)


def test_engine_layer_gives_the_sweep_counts(setup):
    """plan_grid + evaluation_batches + run_points (the public engine) give the counts sweep reports."""
    from anvm_stats.batches import evaluation_batches

    net, data = setup
    spec = av.devices.paper1(0.1)
    plan = av.plan_grid({"noise_level": [0.05, 0.2]})
    program = av.prepare(net, spec, calibration_data=data, fuse_relu=True)
    batches = evaluation_batches(program, data)
    raw = av.run_points(program, av.ChipSampler(program, 3), plan.specs(spec), np.arange(5), batches,
                        av.RunOptions())
    ds = run(net, spec, data, grid={"noise_level": [0.05, 0.2]}, n_instances=5, seed=3, program=program)
    np.testing.assert_array_equal(raw["correct"], ds.correct_count.values)
    np.testing.assert_array_equal(raw["loss"] / batches.n_samples, ds.loss.values)
    with pytest.raises(ConfigError, match="grid.sigma"):
        av.plan_grid({"sigma": [0.1]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("exact_float32")
@pytest.mark.parametrize("net_kind", ["mlp", "resnet", "resnet_large"])
@pytest.mark.parametrize("spec_name", list(CUDA_SPECS))
def test_cuda_runs_are_chunk_invariant_and_use_counter_draws(net_kind, spec_name):
    net = make_mlp() if net_kind == "mlp" else make_resnet()
    x, y = cuda_data(net_kind)
    kw = dict(grid={"noise_level": [0.05, 0.15]}, n_instances=9, seed=3, progress=False, device="cuda")
    ds = av.sweep(net, CUDA_SPECS[spec_name], (x, y), **kw)
    assert ds.attrs["device"].startswith("cuda") and ds.attrs["sampler"] == "philox4x32-counter"
    again = av.sweep(net, CUDA_SPECS[spec_name], (x, y), options=av.RunOptions(instances_per_chunk=4), **kw)
    np.testing.assert_array_equal(again.accuracy.values, ds.accuracy.values)
    assert np.isfinite(ds.loss.values).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("exact_float32")
@pytest.mark.parametrize("spec_name", ["paper1", "read_noise"])
@pytest.mark.parametrize("net_kind", ["mlp", "resnet", "resnet_large"])
def test_cuda_and_cpu_engines_evaluate_the_same_chips(net_kind, spec_name):
    """With counter draws on both devices, the chips (and their read noise) are the same: losses agree to
    float32 round-off."""
    net = make_mlp() if net_kind == "mlp" else make_resnet()
    x, y = cuda_data(net_kind)
    kw = dict(n_instances=6, seed=1, progress=False, options=av.RunOptions(sampler="counter"))
    spec = CUDA_SPECS[spec_name]
    gpu = av.evaluate(net, spec, (x, y), device="cuda", **kw)
    cpu = av.evaluate(net, spec, (x, y), device="cpu", **kw)
    np.testing.assert_allclose(gpu.loss.values, cpu.loss.values, rtol=2e-4, atol=1e-5)
    # accuracies may differ only where a logit margin is at round-off level: at most one sample per chip
    assert np.abs(gpu.correct_count.values - cpu.correct_count.values).max() <= 1
    if net_kind == "resnet_large":
        program = av.prepare(net, spec, calibration_data=x.cuda(), device="cuda")
        program.input(x.cuda())
        assert program.channels_last


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["digits_mlp", "resnet"])
def test_bf16_precision_agrees_with_float32_within_chip_sampling_error(kind):
    """The same 200 chips in bfloat16 products and in float32: bf16 moves the mean correct count by less than
    the float32 estimate's own chip-sampling error (z at a two-sided 1e-5), and the spread likewise (the sd's
    normal-theory standard error). The ResNet reads random images labelled by its float output (100 % there)."""
    from scipy import stats
    from anvm_stats.data import digits
    from tests.helpers import train_digits_mlp
    if kind == "digits_mlp":
        net, te = train_digits_mlp(), digits("test")
        x, y = te.x, te.y
    else:
        net = make_resnet()
        x = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = net(x).argmax(1)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),))
    n = 200
    f32 = run(net, spec, (x, y), n_instances=n)
    bf16 = run(net, spec, (x, y), n_instances=n, precision="bf16")
    assert f32.attrs["precision"] == "float32" and bf16.attrs["precision"] == "bf16"
    c32 = f32[dims.CORRECT_COUNT].values.ravel().astype(float)
    c16 = bf16[dims.CORRECT_COUNT].values.ravel().astype(float)
    assert not np.array_equal(bf16[dims.LOSS].values, f32[dims.LOSS].values)     # bf16 did run
    z = stats.norm.isf(0.5e-5)
    sd = c32.std(ddof=1)
    assert abs(c16.mean() - c32.mean()) <= z * sd / np.sqrt(n)
    assert abs(c16.std(ddof=1) - sd) <= z * sd / np.sqrt(2 * (n - 1))
