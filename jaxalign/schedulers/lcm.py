"""Multistep latent-consistency sampling for LCM-distilled models (Luo et al. 2023, arXiv 2310.04378), as
diffusers' ``LCMScheduler``: each step maps x_t to a clean estimate with the consistency boundary condition and
re-noises it to the next timestep. The re-noising noise is drawn from a fixed key and shared by every population
member, so an image stays a deterministic function of its initial latent, which is what a noise search
optimises. Its stochastic transition is that re-noising, N(a' f(x_t, t), b'^2); ``eta`` does not apply."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind, float32
from jaxalign.schedulers.processes import VariancePreserving, predict_x0_and_eps
from jaxalign.schedulers.vp import clipper, vp_parameters

# LCM's set_timesteps uses neither the spacing nor the offset, and its last step returns the clean estimate
# (so set_alpha_to_one never matters): those are read for completeness only.
PARAMETERS = vp_parameters(
    0.00085, 0.012, "scaled_linear", original_inference_steps=Parameter(50), clip_sample=Parameter(False),
    clip_sample_range=Parameter(1.0), set_alpha_to_one=Parameter(True), steps_offset=Parameter(0),
    thresholding=Parameter(False, (False,)), dynamic_thresholding_ratio=Parameter(0.995), sample_max_value=Parameter(1.0),
    timestep_spacing=Parameter("leading"), timestep_scaling=Parameter(10.0), rescale_betas_zero_snr=Parameter(False, (False,)),
)  # fmt: skip

LCM_NOISE_SEED = 0


def lcm_noise(key: jax.Array, i, shape) -> jax.Array:
    """The re-noising noise of LCM step ``i`` for one latent of ``shape`` (shared by the batch)."""
    return jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)


def build(name: str, process: VariancePreserving, settings: dict) -> Scheduler:
    prediction_type, clip = process.prediction_type, clipper(settings)

    def make_schedule(num_steps: int, image_tokens: int | None = None) -> Schedule:
        alphas_cumprod = process.alphas_cumprod()
        original = settings["original_inference_steps"]
        skip = process.num_train_timesteps // original
        origin = (np.arange(1, original + 1) * skip - 1)[::-1]
        if num_steps > len(origin):
            raise JaxalignError(f"lcm takes at most original_inference_steps={len(origin)} steps, got {num_steps}")
        timesteps = origin[np.floor(np.linspace(0, len(origin), num_steps, endpoint=False)).astype(np.int64)]
        alpha_bar = alphas_cumprod[timesteps]
        # The last step returns the clean estimate itself: alpha_prev = 1, sigma_prev = 0.
        alpha_bar_prev = np.append(alphas_cumprod[timesteps[1:]], 1.0)
        scaled = timesteps * settings["timestep_scaling"]
        sigma_data = 0.5
        return Schedule(
            timesteps=float32(timesteps),
            alpha=float32(np.sqrt(alpha_bar)),
            sigma=float32(np.sqrt(1 - alpha_bar)),
            coefficients={
                "c_skip": float32(sigma_data**2 / (scaled**2 + sigma_data**2)),
                "c_out": float32(scaled / np.sqrt(scaled**2 + sigma_data**2)),
                "alpha_prev": float32(np.sqrt(alpha_bar_prev)),
                "sigma_prev": float32(np.sqrt(1 - alpha_bar_prev)),
            },
        )

    def clean(x, model_output, i, s: Schedule):
        """The consistency function's clean estimate f(x_t, t) = c_skip x_t + c_out x0_pred."""
        x0, _ = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        return s.coefficients["c_out"][i] * clip(x0) + s.coefficients["c_skip"][i] * x

    def transition(x, model_output, i, s: Schedule, eta):
        return s.coefficients["alpha_prev"][i] * clean(x, model_output, i, s), s.coefficients["sigma_prev"][i]

    def step(carry, model_output, i, s: Schedule):
        x, key = carry
        c = s.coefficients
        return (c["alpha_prev"][i] * clean(x, model_output, i, s) + c["sigma_prev"][i] * lcm_noise(key, i, x.shape[1:]), key)

    return Scheduler(name, process, make_schedule, lambda x: (x, jax.random.key(LCM_NOISE_SEED)), step, transition, clean)


KIND = SchedulerKind("LCMScheduler", VariancePreserving, PARAMETERS, build, stochastic=True, summary="multistep latent-consistency sampling (LCM-distilled models)")
