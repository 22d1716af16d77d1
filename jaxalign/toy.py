"""Toy diffusion problems with known answers: a Gaussian mixture whose noise prediction is exact.

For data x0 ~ sum_k w_k N(mu_k, v_k I), the noised marginal at x_t = a x0 + s eps is
sum_k w_k N(a mu_k, (a^2 v_k + s^2) I), so the ideal noise prediction -s * grad log p_t(x_t) is
available in closed form. With the linear reward r(x) = b.x the reward-tilted target
p(x) exp(r(x) / alpha) is again a Gaussian mixture: component k moves to mu_k + v_k b / alpha and
its weight becomes proportional to w_k exp(b.mu_k / alpha + v_k |b|^2 / (2 alpha^2)). DAS
(Kim et al. 2025, arXiv 2501.05803) checks its sampler on such 2-D mixtures; the tests and
``scripts/toy_das.py`` run the methods here through the same builders as Stable Diffusion:
:class:`GaussianMixture` stands in for :class:`~jaxalign.models.DiffusionModel` in
:func:`~jaxalign.sampler.make_sampler`, and its "images" are the points themselves.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.rewards import Objective
from jaxalign.schedulers import NoiseSchedule
from jaxalign.search import Problem

# DDPM's linear schedule: alpha_bar at the last training step is 4e-5, so x_T is N(0, I) to within it.
TOY_NOISE_SCHEDULE = NoiseSchedule(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", set_alpha_to_one=True)


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """An exact "denoiser" for a mixture of isotropic Gaussians in ``dim`` dimensions (latent shape [dim, 1, 1])."""

    means: tuple[tuple[float, ...], ...]
    variances: tuple[float, ...]
    weights: tuple[float, ...]
    noise_schedule: NoiseSchedule = TOY_NOISE_SCHEDULE
    guidance_embedding_dim = None  # classifier-free guidance applies (both branches are equal here)

    @property
    def dim(self) -> int:
        return len(self.means[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.dim, 1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 1, self.dim)

    def predict_noise(self, params, latents, timestep, context, guidance_scale=None):
        alpha_bar = jnp.asarray(self.noise_schedule.alphas_cumprod(), jnp.float32)[timestep]
        a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        x = latents.reshape(latents.shape[0], -1)
        means, variances = jnp.asarray(self.means, jnp.float32), jnp.asarray(self.variances, jnp.float32)
        total_var = a**2 * variances + s**2  # [K]
        diff = x[:, None, :] - a * means[None]  # [N, K, d]
        log_resp = jnp.log(jnp.asarray(self.weights, jnp.float32)) - 0.5 * jnp.sum(diff**2, -1) / total_var - 0.5 * self.dim * jnp.log(total_var)
        resp = jax.nn.softmax(log_resp, axis=1)
        score = -jnp.sum(resp[..., None] * diff / total_var[None, :, None], axis=1)
        return (-s * score).reshape(latents.shape)

    def decode(self, params, latents, clip: bool = True):
        return latents.reshape(latents.shape[0], *self.image_shape)

    def sample(self, key, count: int) -> jax.Array:
        """Exact draws from the mixture: [count, dim]."""
        component_key, noise_key = jax.random.split(key)
        k = jax.random.categorical(component_key, jnp.log(jnp.asarray(self.weights)), shape=(count,))
        noise = jax.random.normal(noise_key, (count, self.dim))
        return jnp.asarray(self.means)[k] + jnp.sqrt(jnp.asarray(self.variances))[k, None] * noise

    def tilted(self, direction, alpha: float) -> GaussianMixture:
        """The mixture proportional to p(x) exp(direction . x / alpha)."""
        b = np.asarray(direction, np.float64)
        means, variances = np.asarray(self.means, np.float64), np.asarray(self.variances, np.float64)
        log_w = np.log(self.weights) + means @ b / alpha + variances * (b @ b) / (2 * alpha**2)
        weights = np.exp(log_w - log_w.max())
        return dataclasses.replace(
            self,
            means=tuple(map(tuple, means + variances[:, None] * b / alpha)),
            weights=tuple(weights / weights.sum()),
        )

    def mean(self) -> np.ndarray:
        return np.asarray(self.weights) @ np.asarray(self.means)

    def problem(self, seed: int = 0) -> Problem:
        """A problem with empty conditioning whose centre (the "baseline" latent) is an N(0, I) draw."""
        empty = jnp.zeros((1, 1), jnp.float32)
        return Problem(context=empty, uncond_context=empty, centre=jax.random.normal(jax.random.key(seed), self.latent_shape))


def linear_reward(direction) -> Objective:
    """r(x) = direction . x for "images" of shape [N, 1, 1, d]: differentiable, with a closed-form tilt."""
    b = jnp.asarray(direction, jnp.float32)

    def fn(images, weights, reward_params, inputs):
        value = images.reshape(images.shape[0], -1) @ b
        return weights["linear"] * value, {"linear": value}

    return Objective(fn=fn, default_weights={"linear": 1.0}, differentiable=True)


def two_modes(separation: float = 2.0, variance: float = 0.25, dim: int = 2) -> GaussianMixture:
    """Two equal modes at -separation and +separation along the first axis."""
    left = (-separation,) + (0.0,) * (dim - 1)
    right = (separation,) + (0.0,) * (dim - 1)
    return GaussianMixture(means=(left, right), variances=(variance, variance), weights=(0.5, 0.5))
