"""DDIM (Song et al. 2021, arXiv 2010.02502) with eta = 0 as its deterministic step, as diffusers'
``DDIMScheduler``; its stochastic transition is DDIM(eta) (:func:`~jaxalign.schedulers.base.ddim_transition`)."""

from __future__ import annotations

import numpy as np

from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind, clean_estimate, ddim_transition, float32
from jaxalign.schedulers.processes import VariancePreserving, predict_x0_and_eps
from jaxalign.schedulers.vp import clipper, spaced_timesteps, spacing, vp_parameters

PARAMETERS = vp_parameters(
    clip_sample=Parameter(True), set_alpha_to_one=Parameter(True), steps_offset=Parameter(0),
    thresholding=Parameter(False, (False,)), dynamic_thresholding_ratio=Parameter(0.995), clip_sample_range=Parameter(1.0),
    sample_max_value=Parameter(1.0), timestep_spacing=spacing("leading"), rescale_betas_zero_snr=Parameter(False, (False,)),
)  # fmt: skip


def build(name: str, process: VariancePreserving, settings: dict) -> Scheduler:
    prediction_type, clip = process.prediction_type, clipper(settings)

    def make_schedule(num_steps: int, image_tokens: int | None = None) -> Schedule:
        alphas_cumprod = process.alphas_cumprod()
        timesteps = spaced_timesteps(settings, num_steps, num_steps)
        final = 1.0 if settings["set_alpha_to_one"] else alphas_cumprod[0]
        prev = timesteps - process.num_train_timesteps // num_steps
        alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, None)], final)
        alpha_bar = alphas_cumprod[timesteps]
        return Schedule(
            timesteps=float32(timesteps),
            alpha=float32(np.sqrt(alpha_bar)),
            sigma=float32(np.sqrt(1 - alpha_bar)),
            coefficients={"alpha_prev": float32(np.sqrt(alpha_bar_prev)), "sigma_prev": float32(np.sqrt(1 - alpha_bar_prev))},
        )

    def step_mean(x, model_output, i, s: Schedule):
        x0, eps = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        return s.coefficients["alpha_prev"][i] * clip(x0) + s.coefficients["sigma_prev"][i] * eps

    return Scheduler(
        name, process, make_schedule, lambda x: (x,), lambda carry, out, i, s: (step_mean(carry[0], out, i, s),),
        ddim_transition(prediction_type, step_mean), clean_estimate(prediction_type, clip),
    )  # fmt: skip


KIND = SchedulerKind("DDIMScheduler", VariancePreserving, PARAMETERS, build, stochastic=True, summary="DDIM, eta = 0 (stochastic steps: DDIM(eta))")
