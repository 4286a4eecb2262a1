"""HA-SGD training (paper 1, Algorithm 1): networks trained to survive the device noise of a HardwareSpec.

``train_hasgd(model, spec, data, samples=8, epochs=10, seed=0) -> TrainResult`` (:mod:`.hasgd`); one gradient
estimator per mode (:mod:`.estimators`); perturbations drawn from the hardware model the Monte Carlo engine uses
(:mod:`.perturb`); grouped forwards (:mod:`.grouped`); local reparameterisation for Gaussian noise (:mod:`.local`);
ADC quantisation in the loop (:mod:`.adc`); atomic, exactly resumable checkpoints (:mod:`.checkpoint`). Its
benchmark is ``benchmarks.training`` in the source checkout.
"""

from .adc import ADCInTheLoop, adc_points
from .checkpoint import load_checkpoint, save_checkpoint
from .estimators import (ESTIMATORS, DirectGradient, GradientEstimator, LocalGradient, SplitGradient,
                         gradient_estimator, plain_gradient)
from .hasgd import HASGDConfig, TrainResult, epoch_order, train_hasgd
from .grouped import group_sizes, perturbed_forward
from .gaussian_form import gaussian_effects
from .local import LayerMoments, LocalPerturbation, draw_local, local_forward, weight_moments
from .perturb import Perturbation, PerturbTarget, draw_perturbations, folded_weights, perturb_targets, step_generators

__all__ = ["train_hasgd", "TrainResult", "HASGDConfig", "epoch_order", "GradientEstimator",
           "SplitGradient", "DirectGradient", "LocalGradient", "ESTIMATORS", "gradient_estimator", "plain_gradient",
           "draw_perturbations", "folded_weights", "Perturbation", "PerturbTarget", "perturb_targets",
           "perturbed_forward", "group_sizes", "step_generators", "ADCInTheLoop", "adc_points", "save_checkpoint",
           "load_checkpoint", "LayerMoments", "LocalPerturbation", "draw_local", "gaussian_effects", "local_forward",
           "weight_moments"]
