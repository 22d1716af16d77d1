"""Euler steps along a rectified flow's velocity (Esser et al. 2024, arXiv 2403.03206: SD3; Flux), as diffusers'
``FlowMatchEulerDiscreteScheduler``: sigmas from 1 towards 0 with the timestep ``shift``
sigma' = s sigma / (1 + (s - 1) sigma), or, with ``use_dynamic_shifting``, the resolution-dependent shift
exp(mu) / (exp(mu) + 1 / sigma - 1) whose mu grows linearly with the number of image tokens (from ``base_shift``
at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len``). Its stochastic transition is DDIM(eta) on
x_sigma = (1 - sigma) x0 + sigma eps, equal to the Euler step at eta = 0."""

from __future__ import annotations

import math

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind, clean_estimate, ddim_transition, float32
from jaxalign.schedulers.processes import RectifiedFlow

PARAMETERS = {
    "num_train_timesteps": Parameter(1000), "shift": Parameter(1.0), "use_dynamic_shifting": Parameter(False),
    "base_shift": Parameter(0.5), "max_shift": Parameter(1.15), "base_image_seq_len": Parameter(256),
    "max_image_seq_len": Parameter(4096), "invert_sigmas": Parameter(False, (False,)), "shift_terminal": Parameter(None, (None, 0.0)),  # diffusers: any falsy value is off
    "use_karras_sigmas": Parameter(False, (False,)), "use_exponential_sigmas": Parameter(False, (False,)),
    "use_beta_sigmas": Parameter(False, (False,)), "time_shift_type": Parameter("exponential", ("exponential", "linear")),
    "stochastic_sampling": Parameter(False, (False,)),
}  # fmt: skip


def dynamic_shift_mu(image_tokens: int, settings: dict) -> float:
    """mu for ``image_tokens`` tokens: linear through (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
    slope = (settings["max_shift"] - settings["base_shift"]) / (settings["max_image_seq_len"] - settings["base_image_seq_len"])
    return image_tokens * slope + settings["base_shift"] - slope * settings["base_image_seq_len"]


def flow_sigmas(settings: dict, num_steps: int, image_tokens: int | None, sigmas=None) -> np.ndarray:
    """The float32 sigmas of ``num_steps`` steps followed by the final 0, as diffusers' ``set_timesteps`` (with the
    pipeline's own ``sigmas`` grid where given, as FluxPipeline passes linspace(1, 1/n, n))."""
    total = settings["num_train_timesteps"]
    dynamic, shift = settings["use_dynamic_shifting"], float(settings["shift"])
    if sigmas is not None:
        sigmas = np.asarray(sigmas, np.float32)
    else:
        # The training sigmas (float32, shifted unless dynamic) bound the inference grid, as in the scheduler's __init__.
        train = np.linspace(1, total, total, dtype=np.float32)[::-1] / np.float32(total)
        if not dynamic:
            train = np.float32(shift) * train / (np.float32(1) + np.float32(shift - 1) * train)
        sigmas = np.linspace(float(train[0]) * total, float(train[-1]) * total, num_steps) / total
    if dynamic:
        if image_tokens is None:
            raise JaxalignError("this flow scheduler shifts its sigmas by the number of image tokens (use_dynamic_shifting); give the latent shape")
        mu = dynamic_shift_mu(image_tokens, settings)
        factor = math.exp(mu) if settings["time_shift_type"] == "exponential" else mu
        sigmas = factor / (factor + (1 / sigmas - 1))
    else:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return np.append(sigmas.astype(np.float32), np.float32(0.0))


def build(name: str, process: RectifiedFlow, settings: dict) -> Scheduler:
    if settings["use_dynamic_shifting"]:
        for key in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"):
            if not isinstance(settings[key], (int, float)) or isinstance(settings[key], bool):
                raise JaxalignError(f"FlowMatchEulerDiscreteScheduler: use_dynamic_shifting needs a number for {key}, got {settings[key]!r}")
    def make_schedule(num_steps: int, image_tokens: int | None = None, sigmas=None) -> Schedule:
        sigmas = flow_sigmas(settings, num_steps, image_tokens, sigmas)
        return Schedule(
            timesteps=float32(sigmas[:-1] * np.float32(process.num_train_timesteps)),
            alpha=float32(1 - sigmas[:-1]),
            sigma=float32(sigmas[:-1]),
            coefficients={
                "dt": float32(sigmas[1:] - sigmas[:-1]),  # in float32, as diffusers subtracts its float32 sigmas
                "alpha_prev": float32(1 - sigmas[1:]),
                "sigma_prev": float32(sigmas[1:]),
            },
        )

    def step_mean(x, velocity, i, s: Schedule):
        return x + s.coefficients["dt"][i] * velocity

    return Scheduler(
        name, process, make_schedule, lambda x: (x,), lambda carry, out, i, s: (step_mean(carry[0], out, i, s),),
        ddim_transition("flow", step_mean), clean_estimate("flow"),
    )  # fmt: skip


KIND = SchedulerKind("FlowMatchEulerDiscreteScheduler", RectifiedFlow, PARAMETERS, build, stochastic=True, summary="Euler on a rectified flow, with shift or dynamic shifting (stochastic steps: DDIM(eta) on the flow)")
