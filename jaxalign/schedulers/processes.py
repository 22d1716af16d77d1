"""Noise processes: how a model's training corrupted clean latents x0 with noise eps, x_t = a_t x0 + b_t eps,
and what its network predicts.

* :class:`VariancePreserving` (DDPM, Ho et al. 2020, arXiv 2006.11239; Stable Diffusion 1.x/2.x, SDXL, PixArt):
  a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t) over integer training timesteps t from a beta schedule; the
  network predicts eps (``epsilon``) or v = a eps - b x0 (``v_prediction``, Salimans & Ho 2022, arXiv 2202.00512).
* :class:`RectifiedFlow` (Liu et al. 2022, arXiv 2209.03003; Esser et al. 2024, arXiv 2403.03206: SD3, Flux):
  a = 1 - sigma, b = sigma, sigma in [0, 1] and the network's time input sigma x num_train_timesteps; it predicts
  the velocity v = eps - x0 (``flow``).

Samplers and methods see only what every process provides: the clean estimate x0, the noise estimate eps
(:func:`predict_x0_and_eps`) and the coefficients (a, b) of each step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


@dataclasses.dataclass(frozen=True)
class VariancePreserving:
    """The beta schedule a variance-preserving model was trained with, and its prediction type."""

    kind: ClassVar[str] = "variance-preserving"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"

    def alphas_cumprod(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:  # scaled_linear
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        # diffusers computes the schedule in float32; match it so timesteps agree bit for bit.
        return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32).astype(np.float64)

    def signal_and_noise(self, t):
        """(a_t, b_t) at the network's time input t (an integer training timestep; traceable)."""
        alpha_bar = jnp.asarray(self.alphas_cumprod(), jnp.float32)[jnp.asarray(t).astype(jnp.int32)]
        return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)

    def last_time(self) -> float:
        """The largest time input a step may take."""
        return self.num_train_timesteps - 1


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """Straight paths from data (sigma = 0) to noise (sigma = 1); the network predicts the velocity eps - x0."""

    kind: ClassVar[str] = "rectified-flow"
    num_train_timesteps: int = 1000
    prediction_type: ClassVar[str] = "flow"

    def signal_and_noise(self, t):
        sigma = jnp.asarray(t, jnp.float32) / self.num_train_timesteps
        return 1.0 - sigma, sigma

    def last_time(self) -> float:
        return float(self.num_train_timesteps)


NoiseProcess = VariancePreserving | RectifiedFlow


def predict_x0_and_eps(prediction_type: str, x, model_output, alpha, sigma):
    """Clean and noise estimates from the model output at a step where x = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x - sigma * eps) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x - sigma * model_output
        eps = sigma * x + alpha * model_output
    else:  # flow: v = eps - x0, so x0 = x - sigma v and eps = x + alpha v (no division: alpha is 0 at sigma = 1)
        x0 = x - sigma * model_output
        eps = x + alpha * model_output
    return x0, eps
