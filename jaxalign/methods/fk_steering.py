"""``fk_steering``: Feynman-Kac steering (Singhal, Horvitz, Teehan, Ren, Yu, Cho & Ranganath 2025, arXiv 2501.06848),
as the official text-to-image code (zacharyhorvitz/Fk-Diffusion-Steering: ``text_to_image/fkd_diffusers/fkd_class.py``
``FKD.resample``, called by ``fkd_pipeline_sd.py`` after every scheduler step; defaults from
``text_to_image/launch_eval_runs.py``).

``popsize`` particles start from N(0, I) and take the sampler's stochastic steps (DDIM with ``eta``, official 1.0).
At step i (x_i -> x_{i+1}, i = 0 .. T - 1), if i is a resampling step (``resample_t_start``,
``resample_t_start + resample_frequency``, ... up to ``resample_t_end``, and always the last step T - 1), the
reward r_i of every particle's clean estimate x̂0(x_i) (decoded) gives the potential's weights, and the particles
x_{i+1} are resampled by them (multinomial, with replacement). The potentials, with r_prev the particle's stored
reward (``reward_min_value`` at first):

* ``diff`` (``potential_type``'s official default): w = exp(λ (r_i - r_prev)), stored r_i;
* ``max``: m = max(r_i, r_prev), w = exp(λ m), stored m;
* ``add``: s = r_i + r_prev, w = exp(λ s), stored s;
* ``rt``: w = exp(λ r_i), stored r_i;

and at the last step ``max``, ``add`` and ``rt`` divide exp(λ x) (x the stored value just computed) by the
product of the weights each particle's line was resampled with. Weights are clamped to [0, 1e10] and NaN ones set
to 0. At the last step, and at every step with ``adaptive_resampling``, the particles are resampled only when the
effective sample size 1 / Σ ŵ² falls below ``ess_threshold`` (0.5) of them; otherwise the stored rewards become
this step's and the product is kept. Resampling also carries each particle's stored reward and product. All
``popsize`` final particles are returned and scored (the official script saves them all and the best by reward).

Deliberate differences: the reward is jaxalign's on the decoded float images (the official scores the
pipeline's post-processed PIL images); where every weight is 0 (every reward NaN, or ``max``/``add``/``rt``'s final
division underflowing) the particles are kept rather than the official ``torch.multinomial`` error; randomness is
JAX's. Budget: T model calls per particle, one decode per particle and resampling step, and the final decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, MethodSpec, trajectory_method
from jaxalign.resampling import multinomial
from jaxalign.sampler import Denoiser
from jaxalign.search import Search

MAX_WEIGHT = 1e10  # the official clamp


class Potential(NamedTuple):
    """``stored(candidates, previous) -> the value a particle keeps`` and ``weight(candidates, previous, stored,
    lam)``; ``corrected_at_end``: the last step's weight is exp(lam x stored) over the product of earlier weights."""

    stored: Callable
    weight: Callable
    corrected_at_end: bool


POTENTIALS: dict[str, Potential] = {
    "diff": Potential(lambda r, prev: r, lambda r, prev, s, lam: jnp.exp(lam * (r - prev)), False),
    "max": Potential(jnp.maximum, lambda r, prev, s, lam: jnp.exp(lam * s), True),
    "add": Potential(lambda r, prev: r + prev, lambda r, prev, s, lam: jnp.exp(lam * s), True),
    "rt": Potential(lambda r, prev: r, lambda r, prev, s, lam: jnp.exp(lam * r), True),
}


def resampling_steps(num_steps: int, start: int, frequency: int, end: int) -> np.ndarray:
    """[num_steps] booleans: the official interval ``arange(start, end + 1, frequency)`` plus the last step."""
    steps = np.zeros(num_steps, bool)
    chosen = [s for s in range(start, end + 1, frequency) if 0 <= s < num_steps]
    steps[chosen + [num_steps - 1]] = True
    return steps


def potential_weights(potential: Potential, candidates, previous, product, lam, last):
    """(stored values, weights) of one resampling step, as ``FKD.resample`` computes them."""
    stored = potential.stored(candidates, previous)
    weights = potential.weight(candidates, previous, stored, lam)
    if potential.corrected_at_end:
        weights = jnp.where(last, jnp.exp(lam * stored) / product, weights)
    weights = jnp.clip(weights, 0.0, MAX_WEIGHT)
    return stored, jnp.where(jnp.isnan(weights), 0.0, weights)


class FKRun(NamedTuple):
    """One FK steering run's particles and diagnostics (NaN / identity where step i did not resample)."""

    clean: jax.Array  # [P, ...] the final particles
    stored: jax.Array  # [P] their stored potential values
    candidates: jax.Array  # [T, P] step i's rewards of the clean estimates (NaN off the resampling steps)
    weights: jax.Array  # [T, P] step i's weights
    ess: jax.Array  # [T] effective sample size of step i's weights
    resampled: jax.Array  # [T] whether step i resampled
    ancestors: jax.Array  # [T, P]


def fk_particles(
    key, denoiser: Denoiser, value_fn: Callable[[jax.Array], jax.Array], popsize: int, latent_shape, knobs: Mapping,
    potential: str, steps_to_resample: np.ndarray, adaptive: bool,
) -> FKRun:  # fmt: skip
    """One run of ``popsize`` particles from fresh N(0, I) noise. ``value_fn(clean latents) -> rewards [P]`` in the
    objective (higher is better); ``knobs``: ``lmbda``, ``eta``, ``reward_min_value``, ``ess_threshold`` (traced); static
    ``steps_to_resample`` (:func:`resampling_steps`). Keys: ``start, loop = split(key)``; step i uses
    ``resample_key, noise_key = split(fold_in(loop, i))``."""
    chosen = POTENTIALS[potential]
    num_steps, lam = denoiser.num_steps, knobs["lmbda"]
    steps_to_resample = jnp.asarray(steps_to_resample)
    start_key, loop_key = jax.random.split(key)
    x = jax.random.normal(start_key, (popsize, *latent_shape), jnp.float32)
    identity = jnp.arange(popsize)

    def body(carry, i):
        x, stored, product = carry
        resample_key, noise_key = jax.random.split(jax.random.fold_in(loop_key, i))
        out = denoiser.output(x, i)
        mean, std = denoiser.transition(x, out, i, knobs["eta"])
        x_next = mean + std * jax.random.normal(noise_key, x.shape, x.dtype)
        last = i == num_steps - 1

        def resample():
            candidates = value_fn(denoiser.predicted_clean(x, out, i))
            new_stored, weights = potential_weights(chosen, candidates, stored, product, lam, last)
            total = jnp.sum(weights)
            normalised = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 1.0 / popsize)
            ess = 1.0 / jnp.sum(normalised**2)
            checked = jnp.logical_or(adaptive, last)
            moves = jnp.logical_and(total > 0, jnp.logical_or(~checked, ess < knobs["ess_threshold"] * popsize))
            ancestors = jnp.where(moves, multinomial(resample_key, normalised), identity)
            new_product = jnp.where(moves, product[ancestors] * weights[ancestors], product)
            return (x_next[ancestors], new_stored[ancestors], new_product), (candidates, weights, ess, moves, ancestors)

        def keep():
            nan = jnp.full((popsize,), jnp.nan, jnp.float32)
            return (x_next, stored, product), (nan, nan, jnp.float32(jnp.nan), jnp.bool_(False), identity)

        return jax.lax.cond(steps_to_resample[i], resample, keep)

    initial = (x, jnp.full((popsize,), knobs["reward_min_value"], jnp.float32), jnp.ones((popsize,), jnp.float32))
    (x, stored, _), (candidates, weights, ess, resampled, ancestors) = jax.lax.scan(body, initial, jnp.arange(num_steps))
    return FKRun(x, stored, candidates, weights, ess, resampled, ancestors)


def run_cost(popsize: int, num_steps: int, resamplings: int) -> dict:
    """T model calls per particle; a decode per particle at each resampling step, and the final ones."""
    return {"nfe": popsize * num_steps, "images": popsize * resamplings + popsize}


def _fk_steering(context: Context, numeric, potential_type: str, resample_frequency: int, resample_t_start: int, resample_t_end: int, adaptive_resampling: bool) -> Search:
    steps = resampling_steps(context.sampler.num_steps, resample_t_start, resample_frequency, resample_t_end)
    cost = run_cost(context.popsize, context.sampler.num_steps, int(steps.sum()))

    def guided_run(key, denoiser, score_images, problem, params):
        def reward(clean):
            total, _ = score_images(denoiser.decode(clean))
            return total

        run = fk_particles(key, denoiser, reward, context.popsize, context.latent_shape, params.method, potential_type, steps, adaptive_resampling)
        return run.clean, cost

    return trajectory_method(context, numeric, guided_run, cost)


def _check(context: Context, static, numeric) -> None:
    def fail(message):
        raise JaxalignError(f"method 'fk_steering': {message}")

    if static["potential_type"] not in POTENTIALS:
        fail(f"unknown method_params.potential_type {static['potential_type']!r}; valid: {', '.join(sorted(POTENTIALS))}")
    if not isinstance(static["adaptive_resampling"], bool):
        fail(f"method_params.adaptive_resampling must be true or false, got {static['adaptive_resampling']!r}")
    for name in ("resample_frequency", "resample_t_start", "resample_t_end"):
        if isinstance(static[name], float) and not static[name].is_integer():
            fail(f"method_params.{name} must be a whole number of steps, got {static[name]}")
    if static["resample_frequency"] < 1:
        fail(f"method_params.resample_frequency must be at least 1, got {static['resample_frequency']}")
    if not 0 <= static["resample_t_start"] <= static["resample_t_end"]:
        # A start past the last step is valid: the official interval then holds only the last step.
        fail(f"the resampling interval [resample_t_start, resample_t_end] = [{static['resample_t_start']}, {static['resample_t_end']}] must be ordered steps from 0")
    if not numeric["lmbda"] > 0:
        fail(f"method_params.lmbda must be positive, got {numeric['lmbda']}")
    if not numeric["eta"] >= 0:
        fail(f"method_params.eta must be non-negative, got {numeric['eta']}")
    if not 0.0 <= numeric["ess_threshold"] <= 1.0:
        fail(f"method_params.ess_threshold is a fraction of the particles in [0, 1], got {numeric['ess_threshold']}")
    if not np.isfinite(numeric["reward_min_value"]):
        fail(f"method_params.reward_min_value must be finite, got {numeric['reward_min_value']}")


def _build(context: Context, numeric, **static) -> Search:
    static = {k: (int(v) if k.startswith("resample_") else v) for k, v in static.items()}
    return _fk_steering(context, numeric, **static)


METHODS.register(
    "fk_steering",
    MethodSpec(
        _build,
        static={"potential_type": "diff", "resample_frequency": 5, "resample_t_start": 5, "resample_t_end": 30, "adaptive_resampling": False},
        numeric={"lmbda": 10.0, "eta": 1.0, "reward_min_value": 0.0, "ess_threshold": 0.5},
        stochastic_steps=True,
        check=_check,
    ),
)
