"""Multistep DPM-Solver++(2M) with the midpoint second-order update and a first-order final step to sigma = 0
(Lu et al. 2022, arXiv 2211.01095), as diffusers' ``DPMSolverMultistepScheduler`` with its defaults. It has no
stochastic step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind, float32
from jaxalign.schedulers.processes import VariancePreserving, predict_x0_and_eps
from jaxalign.schedulers.vp import spaced_timesteps, spacing, vp_parameters

PARAMETERS = vp_parameters(
    solver_order=Parameter(2, (2,)), thresholding=Parameter(False, (False,)), dynamic_thresholding_ratio=Parameter(0.995),
    sample_max_value=Parameter(1.0), algorithm_type=Parameter("dpmsolver++", ("dpmsolver++",)),
    solver_type=Parameter("midpoint", ("midpoint",)),
    # With final_sigmas_type "zero" diffusers takes the last step first-order whatever these two say.
    lower_order_final=Parameter(True), euler_at_final=Parameter(False),
    use_karras_sigmas=Parameter(False, (False,)), use_exponential_sigmas=Parameter(False, (False,)),
    use_beta_sigmas=Parameter(False, (False,)), use_lu_lambdas=Parameter(False, (False,)), use_flow_sigmas=Parameter(False, (False,)),
    flow_shift=Parameter(1.0),  # read only with use_flow_sigmas
    final_sigmas_type=Parameter("zero", ("zero",)), lambda_min_clipped=Parameter(-float("inf"), (-float("inf"),)),
    variance_type=Parameter(None, (None,)), timestep_spacing=spacing("linspace"), steps_offset=Parameter(0),
    rescale_betas_zero_snr=Parameter(False, (False,)), use_dynamic_shifting=Parameter(False, (False,)),
    time_shift_type=Parameter("exponential"),  # read only with use_dynamic_shifting
)  # fmt: skip


def build(name: str, process: VariancePreserving, settings: dict) -> Scheduler:
    prediction_type = process.prediction_type

    def make_schedule(num_steps: int, image_tokens: int | None = None) -> Schedule:
        alphas_cumprod = process.alphas_cumprod()
        if settings["timestep_spacing"] == "leading":
            ratio = process.num_train_timesteps // (num_steps + 1)
            timesteps = (np.arange(num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + settings["steps_offset"]
        elif settings["timestep_spacing"] == "linspace":
            timesteps = spaced_timesteps(settings, num_steps, num_steps + 1)[:-1]
        else:
            timesteps = spaced_timesteps(settings, num_steps, num_steps)
        # Karras-style sigmas of the VP process, ending at sigma = 0 (diffusers' final_sigmas_type="zero").
        sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
        sigmas = np.append(np.interp(timesteps, np.arange(len(sigmas)), sigmas), 0.0)
        alpha_t = 1.0 / np.sqrt(sigmas**2 + 1.0)
        sigma_t = sigmas * alpha_t
        with np.errstate(divide="ignore"):
            lam = np.log(alpha_t) - np.log(sigma_t)  # +inf at the final sigma = 0
        h = lam[1:] - lam[:-1]
        decay = -np.expm1(-h)  # 1 - exp(-h), equal to 1 at the final step
        # Step i: x <- c_x x + c_0 D0 + c_1 (D0 - D_prev); second order from the 2nd step on,
        # first order at the final step (diffusers with final_sigmas_type="zero").
        second_order = np.zeros(num_steps, bool)
        second_order[1:-1] = True
        h_prev = np.concatenate([[1.0], h[:-1]])
        c_1 = np.where(second_order, 0.5 * alpha_t[1:] * decay * h / h_prev, 0.0)
        with np.errstate(invalid="ignore"):
            c_x = np.where(sigma_t[1:] > 0, sigma_t[1:] / sigma_t[:-1], 0.0)
        return Schedule(
            timesteps=float32(timesteps),
            alpha=float32(alpha_t[:-1]),
            sigma=float32(sigma_t[:-1]),
            coefficients={"c_x": float32(c_x), "c_0": float32(alpha_t[1:] * decay), "c_1": float32(c_1)},
        )

    def step(carry, model_output, i, s: Schedule):
        x, x0_prev = carry
        x0, _ = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        c = s.coefficients
        return (c["c_x"][i] * x + c["c_0"][i] * x0 + c["c_1"][i] * (x0 - x0_prev), x0)

    return Scheduler(name, process, make_schedule, lambda x: (x, jnp.zeros_like(x)), step)


KIND = SchedulerKind("DPMSolverMultistepScheduler", VariancePreserving, PARAMETERS, build, stochastic=False, summary="DPM-Solver++(2M), first-order final step to sigma = 0")
