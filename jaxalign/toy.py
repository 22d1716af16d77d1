"""Toy diffusion problems with known answers: a Gaussian mixture whose network output is exact, in
variance-preserving form (noise prediction) and in rectified-flow form (velocity prediction).

For data x0 ~ sum_k w_k N(mu_k, v_k I), the noised marginal at x_t = a x0 + s eps is
sum_k w_k N(a mu_k, (a^2 v_k + s^2) I), so the posterior means E[x0 | x_t] and E[eps | x_t] are available
in closed form, and with them the ideal output of every parameterisation: eps (VP, a = sqrt(alpha_bar),
s = sqrt(1 - alpha_bar)) or the velocity eps - x0 (rectified flow, a = 1 - sigma, s = sigma). With the linear reward r(x) = b.x the reward-tilted target
p(x) exp(r(x) / alpha) is again a Gaussian mixture: component k moves to mu_k + v_k b / alpha and
its weight becomes proportional to w_k exp(b.mu_k / alpha + v_k |b|^2 / (2 alpha^2)). DAS
(Kim et al. 2025, arXiv 2501.05803) checks its sampler on such 2-D mixtures; the tests and
``scripts/toy_das.py`` run the methods here through the same builders as Stable Diffusion:
:class:`GaussianMixture` stands in for :class:`~jaxalign.models.DiffusionModel` in
:func:`~jaxalign.sampler.make_sampler`, and its "images" are the points themselves.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.rewards import Objective
from jaxalign.schedulers import SCHEDULERS, NoiseProcess
from jaxalign.search import Problem

# DDPM's linear schedule: alpha_bar at the last training step is 4e-5, so x_T is N(0, I) to within it.
TOY_VP_SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "set_alpha_to_one": True,
    "clip_sample": False, "steps_offset": 1, "timestep_spacing": "leading",
}  # fmt: skip
# Rectified flow without a timestep shift: sigma runs linearly from 1 to 1 / steps.
TOY_FLOW_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """An exact "denoiser" for a mixture of isotropic Gaussians in ``dim`` dimensions (latent shape [dim, 1, 1]),
    trained, as it were, with the noise process of ``scheduler_config`` (:data:`TOY_VP_SCHEDULER` or
    :data:`TOY_FLOW_SCHEDULER`, a diffusers scheduler config like a real model's)."""

    means: tuple[tuple[float, ...], ...]
    variances: tuple[float, ...]
    weights: tuple[float, ...]
    scheduler_config: dict = dataclasses.field(default_factory=lambda: dict(TOY_VP_SCHEDULER))
    name = "toy"
    guidance = "classifier_free"  # both branches are equal here

    @functools.cached_property
    def process(self) -> NoiseProcess:
        kind = next(k for k in SCHEDULERS.values() if k.diffusers_class == self.scheduler_config["_class_name"])
        return kind.from_config("toy", self.scheduler_config).process

    @property
    def noise_process(self) -> type:
        return type(self.process)

    def as_flow(self) -> GaussianMixture:
        """The same data under a rectified flow (velocity prediction)."""
        return dataclasses.replace(self, scheduler_config=dict(TOY_FLOW_SCHEDULER))

    @property
    def dim(self) -> int:
        return len(self.means[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.dim, 1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 1, self.dim)

    def predict(self, params, latents, timestep, context, guidance_scale=None):
        """The exact output of the process's parameterisation at time input ``timestep``."""
        a, s = self.process.signal_and_noise(timestep)
        x = latents.reshape(latents.shape[0], -1)
        means, variances = jnp.asarray(self.means, jnp.float32), jnp.asarray(self.variances, jnp.float32)
        total_var = a**2 * variances + s**2  # [K]
        diff = x[:, None, :] - a * means[None]  # [N, K, d]
        log_resp = jnp.log(jnp.asarray(self.weights, jnp.float32)) - 0.5 * jnp.sum(diff**2, -1) / total_var - 0.5 * self.dim * jnp.log(total_var)
        resp = jax.nn.softmax(log_resp, axis=1)[..., None]
        # E[eps | x] = s * sum_k r_k (x - a mu_k) / (a^2 v_k + s^2) = -s * score; E[x0 | x] per component by Gaussian conditioning.
        eps = s * jnp.sum(resp * diff / total_var[None, :, None], axis=1)
        x0 = jnp.sum(resp * (means[None] + (a * variances / total_var)[None, :, None] * diff), axis=1)
        outputs = {"epsilon": eps, "v_prediction": a * eps - s * x0, "flow": eps - x0}
        return outputs[self.process.prediction_type].reshape(latents.shape)

    def image_tokens(self, latent_shape) -> int:
        return 1

    def initial_sigmas(self, num_steps: int):
        return None  # the scheduler's own grid

    def decode(self, params, latents, clip: bool = True):
        return latents.reshape(latents.shape[0], *self.image_shape)

    @staticmethod
    def clip_images(images):
        return images  # the toy's "images" are points: nothing to clip

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
