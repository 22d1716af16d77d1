"""Pseudo linear multistep (PLMS) sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds", arXiv 2202.09778), as diffusers' ``PNDMScheduler`` with ``skip_prk_steps=True`` (Stable Diffusion
1.x's own scheduler): Adams-Bashforth combinations of up to four model outputs fed through the PNDM transfer.
Its second step re-evaluates the model at the same timestep (a pseudo-improved Euler start), so ``n`` inference
steps make ``n + 1`` model calls and its table has ``n + 1`` rows (one per call; a single step stays one row).
It has no stochastic step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind, float32
from jaxalign.schedulers.processes import VariancePreserving
from jaxalign.schedulers.vp import spaced_timesteps, spacing, vp_parameters

PARAMETERS = vp_parameters(
    skip_prk_steps=Parameter(False, (True,)), set_alpha_to_one=Parameter(False), timestep_spacing=spacing("leading"), steps_offset=Parameter(0),
)  # fmt: skip


def build(name: str, process: VariancePreserving, settings: dict) -> Scheduler:
    def make_schedule(num_steps: int, image_tokens: int | None = None) -> Schedule:
        """PLMS rows, one per model call; row i maps the carry (x, kept sample, last three outputs) to the next x.

        diffusers' ``PNDMScheduler`` (skip_prk_steps) visits the descending timesteps t_0, t_1, t_1, t_2, ...:
        call 0 takes a plain step from t_0 and keeps its input sample; call 1 averages its output with
        call 0's and restarts from the kept sample, stepping t_1 + r -> t_1 (r = T // n); call k >= 2
        steps t_k -> t_k - r with the 2nd/3rd/4th-order Adams-Bashforth combination of the outputs
        recorded so far (call 1's output is never recorded). Each step is the PNDM transfer
        x' = sqrt(a'/a) x - (a' - a) eps / (a sqrt(1 - a') + sqrt(a (1 - a) a')), with a = alpha_bar,
        and eps = sqrt(a) v + sqrt(1 - a) x for v-prediction; everything but the model outputs is
        folded into the per-row coefficients here.
        """
        alphas_cumprod = process.alphas_cumprod()
        total = process.num_train_timesteps
        ratio = total // num_steps
        base = spaced_timesteps(settings, num_steps, num_steps)  # descending
        timesteps = np.concatenate([base[:2], base[1:]])  # the second timestep twice (once when num_steps == 1)
        rows = len(timesteps)
        call = np.arange(rows)
        restart = call == 1  # the second call steps from the kept sample
        current = np.where(restart, timesteps + ratio, timesteps)
        prev = np.where(restart, timesteps, timesteps - ratio)
        if current.max() >= total:
            raise JaxalignError(f"pndm with {num_steps} steps reaches timestep {current.max()} >= num_train_timesteps={total}")
        final = 1.0 if settings["set_alpha_to_one"] else alphas_cumprod[0]
        a = alphas_cumprod[current]
        a_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, None)], final)
        sample_coeff = np.sqrt(a_prev / a)
        output_coeff = -(a_prev - a) / (a * np.sqrt(1 - a_prev) + np.sqrt(a * (1 - a) * a_prev))
        if process.prediction_type == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) x, folded into both coefficients
            sample_coeff = sample_coeff + output_coeff * np.sqrt(1 - a)
            output_coeff = output_coeff * np.sqrt(a)
        # Weights of (this output, last recorded, the one before, the one before that) by call number.
        weights = np.tile(np.array([55.0, -59.0, 37.0, -9.0]) / 24.0, (rows, 1))
        for k, w in enumerate([[1.0], [0.5, 0.5], [1.5, -0.5], np.array([23.0, -16.0, 5.0]) / 12.0][:rows]):
            weights[k] = np.pad(w, (0, 4 - len(w)))
        weights = weights * output_coeff[:, None]
        return Schedule(
            timesteps=float32(timesteps),
            alpha=float32(np.sqrt(alphas_cumprod[timesteps])),
            sigma=float32(np.sqrt(1 - alphas_cumprod[timesteps])),
            coefficients={
                "c_x": float32(np.where(restart, 0.0, sample_coeff)),
                "c_kept": float32(np.where(restart, sample_coeff, 0.0)),
                "c_out": float32(weights[:, 0]),
                "c_history": float32(weights[:, 1:]),
                "record": jnp.asarray(~restart),  # whether this call's output joins the history
            },
        )

    return Scheduler(name, process, make_schedule, _init, _step)


def _init(x):
    """(x, kept sample, the last three recorded outputs, newest first)."""
    zeros = jnp.zeros_like(x)
    return (x, x, zeros, zeros, zeros)


def _step(carry, model_output, i, s: Schedule):
    x, kept, h1, h2, h3 = carry
    c = s.coefficients
    w = c["c_history"][i]
    x_next = c["c_x"][i] * x + c["c_kept"][i] * kept + c["c_out"][i] * model_output + w[0] * h1 + w[1] * h2 + w[2] * h3
    record = c["record"][i]
    return (x_next, kept, jnp.where(record, model_output, h1), jnp.where(record, h1, h2), jnp.where(record, h2, h3))


KIND = SchedulerKind("PNDMScheduler", VariancePreserving, PARAMETERS, build, stochastic=False, summary="PLMS as diffusers' PNDMScheduler with skip_prk_steps; n steps are n + 1 model calls")
