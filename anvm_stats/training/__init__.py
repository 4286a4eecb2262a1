"""HA-SGD training (paper 1, Algorithm 1): networks trained to survive the device noise of a HardwareSpec.

``train_hasgd(model, spec, data, samples=8, epochs=10, seed=0) -> TrainResult`` (:mod:`.hasgd`); perturbations
drawn from the hardware model the Monte Carlo engine uses (:mod:`.perturb`); ADC quantisation in the loop
(:mod:`.adc`); local reparameterisation for Gaussian noise (:mod:`.local`); grouped forwards (:mod:`.grouped`);
atomic, exactly resumable checkpoints (:mod:`.checkpoint`). Its benchmark is ``benchmarks.training`` in the
source checkout.
"""

from .adc import ADCInTheLoop, adc_points
from .checkpoint import load_checkpoint, save_checkpoint
from .hasgd import HASGDConfig, TrainResult, accumulate_gradient, epoch_order, train_hasgd
from .local import LayerMoments, LocalPerturbation, draw_local, gaussian_effects, local_forward, weight_moments
from .perturb import (Perturbation, PerturbTarget, draw_perturbations, group_sizes, perturb_targets,
                      perturbed_forward, step_generators)


__all__ = ["train_hasgd", "TrainResult", "HASGDConfig", "accumulate_gradient", "epoch_order",
           "draw_perturbations", "Perturbation", "PerturbTarget", "perturb_targets", "perturbed_forward",
           "group_sizes", "step_generators", "ADCInTheLoop", "adc_points", "save_checkpoint", "load_checkpoint",
           "LayerMoments", "LocalPerturbation", "draw_local", "gaussian_effects", "local_forward",
           "weight_moments"]
