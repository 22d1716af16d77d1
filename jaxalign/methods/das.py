"""``das``: Diffusion Alignment as Sampling (Kim, Kim, Choi, Park, Ok & Yun, ICLR 2025, arXiv 2501.05803).

Sequential Monte Carlo over the denoising trajectory towards p(x) exp(r(x) / alpha), as the official
Stable Diffusion pipeline (krafton-ai/DAS ``das/diffusers_patch/pipeline_using_SMC.py``, ``sd_sampling``
l.173-414; resampling in ``das/smc_utils.py``; defaults from ``config/sd.py``). ``popsize`` particles
start from N(0, I). At step i (x_i -> x_{i+1}, i = 0 .. T - 1) every particle gets one guided model
call, its predicted clean latent x̂0(x_i), the twist lambda_i r(x̂0(x_i)) / alpha and the gradient
of r(x̂0(x_i)) / alpha with respect to x_i, backpropagated through the reward, the decoder and the
model (l.203-238); the log weights take lpd + twist - lpq - previous twist (l.315-317); particles are
resampled when the effective sample size falls below ``ess_threshold * popsize`` (after the
reweighting, before the propagation, l.326; then log w = -log P, otherwise the log weights are
normalised, ``smc_utils.py`` l.169-203); each particle then moves by the model's stochastic step
shifted by variance * lambda_{i+1} * gradient (l.351-367). After the last step the weights take
r(x_T) / alpha minus the previous twist (no lambda, l.377-393), and the particle of largest final
log weight is returned (l.413).

What matches, point by point: the exponential tempering lambda_i = min((1 + gamma)^i - 1, 1) with
tempering_start 0 (l.271-276); the twist lambda_i r / alpha and the gradient scaled by lambda_{i+1}
(l.306-307); the full gradient through the model output (no stop-gradient on it, l.220);
``nan_to_num`` on the twist and on the gradient when either holds a NaN (l.231-238); the increment
lpd + lt - lpq - lt_prev with Gaussian log densities of the proposal x_{i+1} under the unshifted and
shifted kernels, NaN -> -1e6 / +1e6 (l.362-367); the ESS (sum w)^2 / sum w^2 of normalised weights;
the SSP resampler and the other four schemes (:mod:`jaxalign.resampling`); the final reweighting and
the argmax output; the defaults of ``config/sd.py`` (alpha = ``kl_coeff`` 0.005 for the aesthetic
reward, gamma 0.008, ESS threshold 0.5, eta 1, ``ssp``); and the budget (per particle and step one
guided model call and one backward pass through model, decoder and reward, step 0 included; T P + P
decodes, and one more for the returned image, which ``DAS.py`` re-scores). The twist uses the raw objective (higher is better), as the official (a NaN reward
becomes a 0 twist through ``nan_to_num``), not :func:`~jaxalign.methods.base.value`'s non-finite
-> -inf.

Deliberate differences:

* On resampling we also permute the gradient and the twist (the tempered reward) with the
  particles; the official code permutes only x, the model output and x̂0 (l.341-343), so a slot
  proposes with its pre-resampling particle's gradient and the next step subtracts the wrong
  particle's twist (on the toy mixture with resampling at every step this moves the mode mass
  from the exact 0.73 to 0.998, which ``tests/test_das.py`` detects).
* The stochastic step is the sampler's own transition (:class:`~jaxalign.sampler.Denoiser`): for
  DDIM it is the official eta-DDIM step; for LCM eta does not apply (the noise is sqrt(1 - abar_prev)
  in both codes, but the official weights use variance eta^2 (1 - abar_prev) and carry an off-by-one
  in the last two steps, ``pipeline_using_SMC_LCM.py`` l.400-434), and we weight with the variance
  the step actually uses.
* A step with zero variance (LCM's last step, or eta 0) has log-ratio 0: the shifted and unshifted
  kernels are the same point mass. The official code (which never reaches it with its defaults)
  would map the 0/0 to -1e6 - 1e6 for every particle.
* All particles go through the model and its backward pass as one batch (the official loops over
  chunks of ``batch_p`` = 2 particles; the values per particle are the same).
* Randomness is JAX's (the official code resamples with numpy's global generator); the official
  ``tempering`` options other than the exponential schedule (polynomial, adaptive, FreeDoM) and
  ``tempering_start`` > 0 are not ported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, MethodSpec, trajectory_method
from jaxalign.resampling import RESAMPLERS
from jaxalign.sampler import Denoiser
from jaxalign.search import Search


class DASRun(NamedTuple):
    """One DAS run's particles and diagnostics."""

    clean: jax.Array  # [P, ...] final particles x_T
    log_weights: jax.Array  # [P] final log weights (unnormalised, as the official log_w)
    ess: jax.Array  # [T + 1] effective sample size at each step's resampling check, then of the final weights
    resampled: jax.Array  # [T] whether step i resampled
    ancestors: jax.Array  # [T, P] step i's ancestor indices (arange where it did not resample)
    rewards: jax.Array  # [P] r(x_T), the final objective (higher is better)


def tempering(num_steps: int, gamma) -> jax.Array:
    """DAS's exponential schedule lambda_i = min((1 + gamma)^i - 1, 1), i = 0 .. num_steps: [num_steps + 1].

    ``pipeline_using_SMC.py`` l.275-276 with tempering_start 0; gamma 0.008 and 100 steps reach 1 at
    i = 87. ``expm1(i log1p(gamma))`` is the same number without float32 cancellation for small gamma.
    """
    i = jnp.arange(num_steps + 1, dtype=jnp.float32)
    return jnp.minimum(jnp.expm1(i * jnp.log1p(jnp.asarray(gamma, jnp.float32))), 1.0)


def tempering_gamma_for(num_steps: int, gamma: float = 0.008, reference_steps: int = 100) -> float:
    """The gamma with which lambda reaches 1 at the same fraction of ``num_steps`` as ``gamma`` does of
    ``reference_steps`` (the official 0.008 over 100 steps: at step 87.0 of 100, so 0.0829 for 10 steps).

    The official gamma is tuned for its 100 steps: over jaxalign's default 10 it only reaches lambda 0.083, and
    the twist is nearly off. (1 + g)^(f T) = 2 at the fraction f = log 2 / (log(1 + gamma) reference_steps).
    """
    saturation = math.log(2.0) / math.log1p(gamma) / reference_steps
    return math.expm1(math.log(2.0) / (saturation * num_steps))


def effective_sample_size(log_weights) -> jax.Array:
    """(sum w)^2 / sum w^2 of the normalised weights (``smc_utils.py`` l.3-16)."""
    weights = jnp.exp(log_weights - jax.nn.logsumexp(log_weights))
    return jnp.sum(weights) ** 2 / jnp.sum(weights**2)


def _nan_to_num_if_any_nan(x):
    # The official code cleans the whole tensor only when it holds a NaN (an inf alone stays).
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.nan_to_num(x), x)


def _gaussian_log_density(x, mean, variance):
    """Sum over all but the first axis of log N(x; mean, variance), as the official lpd / lpq.

    Zero variance gives 0 (see the module docstring); the normalising terms, equal in lpd and lpq,
    are kept so NaN inputs still map as the official ones do.
    """
    safe = jnp.where(variance > 0, variance, 1.0)
    per_dim = -0.5 * (x - mean) ** 2 / safe - 0.5 * jnp.log(safe) - 0.5 * jnp.log(2 * jnp.pi)
    total = jnp.sum(per_dim.reshape(x.shape[0], -1), axis=1)
    return jnp.where(variance > 0, total, 0.0)


def das_particles(key, denoiser: Denoiser, value_fn: Callable[[jax.Array], jax.Array], popsize: int, latent_shape, knobs: Mapping, resample: Callable) -> DASRun:
    """One DAS run of ``popsize`` particles from fresh N(0, I) noise (the official SD pipeline's loop).

    ``value_fn(clean latents [P, ...]) -> r [P]`` is the objective (higher is better) (it must be
    differentiable); ``knobs`` holds ``alpha``, ``tempering_gamma``, ``ess_threshold`` and ``eta``
    (traced); ``resample(key, normalised weights [P]) -> ancestors [P]``. Keys: ``start, loop =
    split(key)``; x_0 = normal(start); step i uses ``resample_key, noise_key =
    split(fold_in(loop, i))``.
    """
    steps = denoiser.num_steps
    alpha, eta = knobs["alpha"], knobs["eta"]
    lam = tempering(steps, knobs["tempering_gamma"])
    start_key, loop_key = jax.random.split(key)
    x = jax.random.normal(start_key, (popsize, *latent_shape), jnp.float32)

    def twist_and_gradient(x, i):
        # Per particle: log twist r(x̂0(x_i)) / alpha and its gradient with respect to x_i, through the
        # model output too (one forward and one backward pass per particle, pipeline l.210-220).
        def total_twist(x):
            out = denoiser.output(x, i)
            twist = value_fn(denoiser.predicted_clean(x, out, i)) / alpha
            return jnp.sum(twist), (twist, out)

        (_, (twist, out)), gradient = jax.value_and_grad(total_twist, has_aux=True)(x)
        return _nan_to_num_if_any_nan(twist), _nan_to_num_if_any_nan(gradient), out

    def body(carry, i):
        x, log_w, twist_prev, log_p_diffusion, log_p_proposal = carry
        resample_key, noise_key = jax.random.split(jax.random.fold_in(loop_key, i))
        twist, gradient, out = twist_and_gradient(x, i)
        twist = lam[i] * twist  # pipeline l.306
        gradient = lam[i + 1] * gradient  # pipeline l.307: the next step's lambda
        log_w = log_w + (log_p_diffusion + twist - log_p_proposal - twist_prev)  # pipeline l.315-317
        ess = effective_sample_size(log_w)
        resampled = ess < knobs["ess_threshold"] * popsize
        ancestors, log_w = jax.lax.cond(
            resampled,
            lambda: (resample(resample_key, jax.nn.softmax(log_w)), jnp.full((popsize,), -jnp.log(jnp.float32(popsize)))),
            lambda: (jnp.arange(popsize), log_w - jax.nn.logsumexp(log_w)),
        )
        # Our fix: the gradient and twist follow their particles (the official permutes x, eps, x̂0 only).
        x, out, gradient, twist = x[ancestors], out[ancestors], gradient[ancestors], twist[ancestors]
        mean, std = denoiser.transition(x, out, i, eta)
        variance = std**2
        shift = variance * gradient  # pipeline l.359: eta^2 sigma_t^2 lambda_{i+1} grad r(x̂0) / alpha
        x = mean + std * jax.random.normal(noise_key, x.shape, x.dtype) + shift
        log_p_diffusion = jnp.nan_to_num(_gaussian_log_density(x, mean, variance), nan=-1e6)  # pipeline l.362-367
        log_p_proposal = jnp.nan_to_num(_gaussian_log_density(x, mean + shift, variance), nan=1e6)
        return (x, log_w, twist, log_p_diffusion, log_p_proposal), (ess, resampled, ancestors)

    zeros = jnp.zeros((popsize,), jnp.float32)
    carry = (x, zeros, zeros, zeros, zeros)
    (x, log_w, twist_prev, log_p_diffusion, log_p_proposal), (ess, resampled, ancestors) = jax.lax.scan(body, carry, jnp.arange(steps))
    # Final weights: the clean particles' r / alpha, not tempered, no resampling (pipeline l.377-393).
    rewards = value_fn(x)
    log_w = log_w + (log_p_diffusion + rewards / alpha - log_p_proposal - twist_prev)
    return DASRun(clean=x, log_weights=log_w, ess=jnp.append(ess, effective_sample_size(log_w)), resampled=resampled, ancestors=ancestors, rewards=rewards)


def run_cost(popsize: int, num_steps: int) -> dict:
    """Budget of one run, counted as the official: a guided model call and a backward pass through
    model, decoder and reward per particle and step (step 0 included), T P Tweedie decodes, the P
    final ones, and the returned particle's image decoded again to score it (as ``DAS.py`` re-scores it)."""
    return {"nfe": popsize * num_steps, "images": popsize * num_steps + popsize + 1, "vjp_nfe": popsize * num_steps}


def _das(context: Context, numeric, resampling: str) -> Search:
    resample = RESAMPLERS[resampling]
    cost = run_cost(context.popsize, context.sampler.num_steps)

    def guided_run(key, denoiser, score_images, problem, params):
        def reward(clean):
            # The raw objective: the official twist has no non-finite -> -inf.
            total, _ = score_images(denoiser.decode(clean))
            return total

        run = das_particles(key, denoiser, reward, context.popsize, context.latent_shape, params.method, resample)
        best = jnp.argmax(run.log_weights)  # pipeline l.413: the single particle of largest final weight
        return run.clean[best][None], cost

    return trajectory_method(context, numeric, guided_run, cost)


def _check(context: Context, static, numeric) -> None:
    name = static["resampling"]
    if name not in RESAMPLERS:
        raise JaxalignError(f"method 'das': unknown method_params.resampling {name!r}; valid: {', '.join(sorted(RESAMPLERS))}")
    if not 0.0 <= numeric["ess_threshold"] <= 1.0:
        raise JaxalignError(f"method 'das': method_params.ess_threshold is a fraction of the particles in [0, 1], got {numeric['ess_threshold']}")
    if numeric["alpha"] <= 0:
        raise JaxalignError(f"method 'das': method_params.alpha (the KL coefficient) must be positive, got {numeric['alpha']}")
    if numeric["tempering_gamma"] < 0 or numeric["eta"] < 0:
        raise JaxalignError(f"method 'das': method_params.tempering_gamma and eta must be non-negative, got {numeric['tempering_gamma']} and {numeric['eta']}")


METHODS.register(
    "das",
    MethodSpec(
        _das,
        needs_gradient=True,
        static={"resampling": "ssp"},
        numeric={"alpha": 0.005, "tempering_gamma": 0.008, "ess_threshold": 0.5, "eta": 1.0},
        stochastic_steps=True,
        check=_check,
    ),
)
