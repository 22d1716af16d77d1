"""What the variance-preserving schedulers share: the noise-process parameters of diffusers' DDPM-family
scheduler classes and their timestep spacings (``leading``, ``linspace``, ``trailing``, as diffusers defines them)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign.schedulers.base import Parameter

SPACINGS = ("leading", "linspace", "trailing")


def vp_parameters(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", **class_specific) -> dict[str, Parameter]:
    """The parameters every diffusers VP scheduler takes (defaults differ by class), then the class's own."""
    return {
        "num_train_timesteps": Parameter(1000),
        "beta_start": Parameter(beta_start),
        "beta_end": Parameter(beta_end),
        "beta_schedule": Parameter(beta_schedule, ("linear", "scaled_linear")),
        "trained_betas": Parameter(None, (None,)),
        "prediction_type": Parameter("epsilon", ("epsilon", "v_prediction")),
        **class_specific,
    }


def spacing(default: str = "leading") -> Parameter:
    return Parameter(default, SPACINGS)


def spaced_timesteps(settings: dict, num_steps: int, count: int) -> np.ndarray:
    """``count`` descending training timesteps for ``num_steps`` inference steps, per diffusers."""
    total = settings["num_train_timesteps"]
    if settings["timestep_spacing"] == "linspace":
        return np.linspace(0, total - 1, count).round()[::-1].astype(np.int64)
    if settings["timestep_spacing"] == "leading":
        ratio = total // count
        return (np.arange(count) * ratio).round()[::-1].astype(np.int64) + settings["steps_offset"]
    ratio = total / num_steps
    return (np.round(np.arange(total, 0, -ratio)) - 1).astype(np.int64)[:count]


def clipper(settings: dict):
    """diffusers' ``clip_sample``: the clean estimate clipped to [-clip_sample_range, clip_sample_range]."""
    if not settings.get("clip_sample"):
        return lambda x0: x0
    bound = float(settings["clip_sample_range"])
    return lambda x0: jnp.clip(x0, -bound, bound)
