"""``dno`` and ``dno_hybrid``: Direct Noise Optimization (Tang et al. 2024, arXiv 2405.18881), as the
paper's reference runs it (pjjajal/diffusion-trajectory ``benchmark_dno.py`` and
``benchmark_dno_nograd.py``, with DNO's own code vendored in its ``dno/``).

``dno`` optimises ``popsize`` independent noise chains by gradient descent on minus the reward of
their images, back-propagated through the whole sampler (each step's activations rematerialised, as
the reference's ``torch.utils.checkpoint``): AdamW with torch's defaults (lr 0.01, betas 0.9/0.999,
eps 1e-8, weight decay 0.01, which nobody set and so applies) after clipping each chain's gradient to
global norm 1; a chain whose gradient has a non-finite entry skips that step, as the reference's fp16
``GradScaler`` skips ``optimizer.step()``. ``mode="ode"`` (the benchmark's default, eta 0) optimises the initial noise only;
``mode="sde"`` (DNO's own default) samples with DDIM(eta) and optimises all T + 1 noises (the initial
latent and every step's injected noise; the last step is deterministic, as DNO sets sigma_0 = 0).
DNO's probability regulariser (``probability_regularizer``) is added with weight ``gamma`` (0 in the
reference's benchmarks).

``dno_hybrid`` is DNO's zeroth-order "hybrid" estimator (``benchmark_dno_nograd.py``): one chain per
prompt; each generation samples its noise z (member 0) and ``popsize - 1`` perturbations z + mu eps
(mu 0.01, every noise perturbed), estimates the loss gradient *in image space* as
g = sum_i (l_i - l_0)(img_i - img_0), normalises it by ||g|| + 1e-3, back-propagates it through
the sampler from z (one VJP) and takes the same clipped AdamW step. Black-box rewards work.

Generation 0 is every method's initial population (the baseline and N(0, 1) noises): ``dno``'s
chains start there, ``dno_hybrid``'s chain at the baseline. Deliberate differences (README): chains
are optimised in float32 (the reference's float16 noises under AdamW turn to NaN after one step of
``benchmark_dno_nograd.py``); the image-space estimate keeps colour channels (the reference averages
them, a bug against DNO's own code) and sums perturbations; the configured scheduler's timesteps are
used (``benchmark_dno.py`` steps SD 1.5's PNDM timestep list with DDIM updates); the best image so far
is tracked (the reference logs each iterate).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, Evaluated, Method, MethodSpec, finite_scores, make_search, numeric_defaults
from jaxalign.schedulers import stochastic_schedulers
from jaxalign.search import initial_population, sharding_helpers

_OPTIMIZER_KNOBS = ("learning_rate", "max_grad_norm", "weight_decay")
_MODES = ("ode", "sde")


def _clipped_adamw(learning_rate, max_grad_norm, weight_decay):
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))


def _optimizer() -> optax.GradientTransformation:
    """Clipped AdamW whose knobs are set from the traced method params by :func:`_with_knobs`."""
    return optax.inject_hyperparams(_clipped_adamw)(**{k: 0.0 for k in _OPTIMIZER_KNOBS})


def _with_knobs(opt_state, params, batch_shape=()):
    knobs = {k: jnp.broadcast_to(params.method[k], batch_shape) for k in _OPTIMIZER_KNOBS}
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **knobs})


class ChainState(NamedTuple):
    noises: jax.Array  # [P, L] (dno) or [L] (dno_hybrid); L = d (ode) or (T + 1) d (sde)
    opt_state: Any


def probability_regularizer(key, noise, subsample: int = 4, permutations: int = 100):
    """DNO's regulariser on a flattened noise v (``dno_stable_diffusion.py``): minus the log-probability
    bounds of the mean and covariance of v's length-``subsample`` blocks being those of N(0, I), on v and
    on ``permutations`` random shuffles of it; clamped at -log 2, so typical noise has zero gradient."""
    size = noise.size
    rows = size // subsample

    def log_probability(blocks):
        mean_norm = jnp.linalg.norm(jnp.mean(blocks, axis=0))
        covariance = blocks.T @ blocks / rows
        covariance_gap = jnp.max(jnp.abs(jnp.linalg.eigvalsh(covariance - jnp.eye(subsample))))
        log_p_mean = jnp.minimum(-rows * mean_norm**2 / (2 * subsample), -math.log(2))
        deviation = jnp.maximum(jnp.sqrt(1 + covariance_gap) - 1 - math.sqrt(subsample / rows), 0.0)
        log_p_covariance = jnp.minimum(-rows * deviation**2 / 2, -math.log(2))
        return log_p_mean + log_p_covariance

    shuffled = jax.vmap(lambda k: log_probability(noise[jax.random.permutation(k, size)].reshape(rows, subsample)))(
        jax.random.split(key, permutations)
    )
    return -(log_probability(noise.reshape(rows, subsample)) + jnp.mean(shuffled))


def renderer(context: Context, mode: str):
    """``render(model_params, problem, params, noises [N, L]) -> images``: the sampler as a function of
    the initial noise (ode, any scheduler) or of all T + 1 noises (sde, DDIM(eta) steps)."""
    denoise = latent_renderer(context, mode)
    return lambda model_params, problem, params, noises: context.sampler.decode(model_params, denoise(model_params, problem, params, noises))


def latent_renderer(context: Context, mode: str):
    """As :func:`renderer`, up to the clean latents (before decoding)."""
    sampler, latent_shape = context.sampler, context.latent_shape
    steps = sampler.num_steps
    shard_population, _ = sharding_helpers(context.make_mesh(context.popsize))

    def denoise(model_params, problem, params, noises):
        if mode == "ode":
            latents = shard_population(noises.reshape(-1, *latent_shape))
            return sampler.denoise(model_params, latents, problem.context, problem.uncond_context, params.guidance_scale)
        denoiser = sampler.bind(model_params, problem.context, problem.uncond_context, params.guidance_scale)
        slices = noises.reshape(-1, steps + 1, *latent_shape)  # [..., k, ...]: step j injects slice T - 1 - j; slice T is x_T

        def step(x, j):
            mean, std = denoiser.transition(x, denoiser.output(x, j), j, params.method["eta"])
            std = jnp.where(j == steps - 1, 0.0, std)
            return mean + std * jnp.take(slices, steps - 1 - j, axis=1), None

        if sampler.remat:
            step = jax.checkpoint(step)
        return jax.lax.scan(step, shard_population(slices[:, steps]), jnp.arange(steps))[0]

    return denoise


def _chain_length(context: Context, mode: str) -> int:
    dim = math.prod(context.latent_shape)
    return dim if mode == "ode" else (context.sampler.num_steps + 1) * dim


def _start_chains(key, first_noises, mode: str, dim: int):
    """Chains from generation 0's solutions; in sde mode the step noises are fresh N(0, I) draws."""
    if mode == "ode":
        return first_noises
    steps = jax.random.normal(key, first_noises[..., :-dim].shape)
    return jnp.concatenate([steps, first_noises[..., -dim:]], axis=-1)


def _regularizer(key, noise, params):
    if noise.size % 4:  # no blocks to take statistics of; ``gamma`` > 0 is refused for such sizes
        return jnp.float32(0.0)
    gamma = params.method["gamma"]
    return jax.lax.cond(gamma > 0, lambda: gamma * probability_regularizer(key, noise), lambda: jnp.float32(0.0))


def _passes(context: Context, members: int, backward: int) -> dict:
    """Budget of sampling ``members`` images, ``backward`` of them back-propagated (with the recomputed forward passes)."""
    steps = context.sampler.num_steps
    recompute = backward * steps if context.sampler.remat else 0
    return {"nfe": members * steps + recompute, "images": members, "vjp_nfe": backward * steps}


def _finite(x):
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _step_if_finite(optimizer, grad, opt_state, noises):
    """One optimiser step, or none (the noises and the optimiser state kept, Adam's count too) where the gradient
    has a non-finite entry: the reference's fp16 ``GradScaler.step`` skips ``optimizer.step()`` then."""
    updates, new_state = optimizer.update(grad, opt_state, noises)
    finite = jnp.all(jnp.isfinite(grad))
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    return keep(noises + updates, noises), jax.tree.map(keep, new_state, opt_state)


def _dno(context: Context, numeric, mode: str):
    popsize, length, dim = context.popsize, _chain_length(context, mode), math.prod(context.latent_shape)
    render, optimizer = renderer(context, mode), _optimizer()

    def loss(noises, key, model_params, score_images, problem, params):
        images = render(model_params, problem, params, noises)
        total, components = score_images(images)
        regularizer = jax.vmap(lambda k, z: _regularizer(k, z, params))(jax.random.split(key, popsize), noises)
        return jnp.sum(-finite_scores(total) + regularizer), (total, components, images)

    def evaluate(key, model_params, score_images, problem, params, noises):
        (_, (total, components, images)), grad = jax.value_and_grad(loss, has_aux=True)(noises, key, model_params, score_images, problem, params)
        return Evaluated(total, components, images, extra=grad)  # a chain's non-finite gradient skips its step (see update)

    def propose(key, state: ChainState, params, problem):
        return state.noises, state

    def update(key, state: ChainState, noises, scores, grad, params, first):
        if first:
            chains = _start_chains(key, noises, mode, dim)
            return ChainState(chains, _with_knobs(jax.vmap(optimizer.init)(chains), params, (popsize,)))
        return ChainState(*jax.vmap(_step_if_finite, in_axes=(None, 0, 0, 0))(optimizer, grad, _with_knobs(state.opt_state, params, (popsize,)), noises))

    def init_state(key, centre, params):
        placeholder = jnp.zeros((popsize, length), jnp.float32)
        return ChainState(placeholder, _with_knobs(jax.vmap(optimizer.init)(placeholder), params, (popsize,)))

    return make_search(context, _chains_method(context, numeric, mode, init_state, propose, update, evaluate, _passes(context, popsize, popsize)))


def image_space_gradient(losses, images):
    """DNO's hybrid estimate of the loss gradient in image space from member 0 and its perturbations:
    sum_i (l_i - l_0)(img_i - img_0), normalised by its norm + 1e-3 (non-finite losses contribute nothing)."""
    difference = _finite(losses[1:] - losses[0])
    g = jnp.tensordot(difference, images[1:] - images[0], axes=1)
    return g / (jnp.linalg.norm(g) + 1e-3)


# Where dno_hybrid differences images and pulls its estimate back: the decoder's raw output on its [-1, 1] scale (the
# reference's benchmark_dno_nograd.py, so saturated pixels still pass gradient), or the scored (clipped) images.
IMAGE_GRADIENTS = ("raw", "clipped")


def _dno_hybrid(context: Context, numeric, mode: str, image_gradient: str):
    popsize, length, dim = context.popsize, _chain_length(context, mode), math.prod(context.latent_shape)
    denoise, decode, optimizer = latent_renderer(context, mode), context.sampler.decode, _optimizer()

    def images_and_space(model_params, latents):  # one decode per member either way
        if image_gradient == "raw":
            raw = decode(model_params, latents, False)
            return context.sampler.clip_images(raw), 2.0 * raw - 1.0
        images = decode(model_params, latents)
        return images, images

    def propose(key, state: ChainState, params, problem):
        perturbations = params.method["perturbation"] * jax.random.normal(key, (popsize - 1, length))
        return jnp.concatenate([state.noises[None], state.noises + perturbations]), state

    def evaluate(key, model_params, score_images, problem, params, noises):
        def first(z):  # member 0, the chain: its image in the gradient's space, and its scored image
            image, space = images_and_space(model_params, denoise(model_params, problem, params, z[None]))
            return space[0], image[0]

        first_space, pullback, first_image = jax.vjp(first, noises[0], has_aux=True)
        rest_images, rest_space = images_and_space(model_params, denoise(model_params, problem, params, noises[1:]))
        images = jnp.concatenate([first_image[None], rest_images])
        total, components = score_images(images)
        g = image_space_gradient(-finite_scores(total), jnp.concatenate([first_space[None], rest_space]))
        (grad,) = pullback(g)
        grad = grad + jax.grad(lambda z: _regularizer(key, z, params))(noises[0])
        return Evaluated(total, components, images, extra=_finite(grad))

    def update(key, state: ChainState, noises, scores, grad, params, first):
        if first:  # the chain starts at the baseline, member 0 of generation 0
            chain = _start_chains(key, noises[0], mode, dim)
            return ChainState(chain, _with_knobs(optimizer.init(chain), params))
        updates, opt_state = optimizer.update(grad, _with_knobs(state.opt_state, params), noises[0])
        return ChainState(noises[0] + updates, opt_state)

    def init_state(key, centre, params):
        placeholder = jnp.zeros((length,), jnp.float32)
        return ChainState(placeholder, _with_knobs(optimizer.init(placeholder), params))

    return make_search(context, _chains_method(context, numeric, mode, init_state, propose, update, evaluate, _passes(context, popsize, 1)))


def _chains_method(context: Context, numeric, mode: str, init, propose, update, evaluate, cost) -> Method:
    """DNO's solutions: in sde mode every step's noise, then the initial latent (the last ``dim`` entries); generation
    0's step noises are zeros (the configured sampler draws its own; the chains start from fresh ones)."""
    length, dim = _chain_length(context, mode), math.prod(context.latent_shape)
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(length - dim, 0)])  # noqa: E731
    return Method(
        init, propose, update, numeric_defaults(numeric), evaluate=evaluate, cost=cost,
        centre=lambda problem, params: pad(problem.centre.reshape(-1)),
        first_population=lambda key, problem, params: pad(initial_population(key, problem.centre.reshape(-1), context.popsize)),
        best_solution_is="initial noise" if length == dim else "initial noise and every step's noise",
    )  # fmt: skip


def _check(name: str):
    def check(context: Context, static, numeric) -> None:
        mode = static["mode"]
        if mode not in _MODES:
            raise JaxalignError(f"method {name!r}: unknown method_params.mode {mode!r}; valid: {', '.join(_MODES)}")
        if mode == "sde" and not context.sampler.stochastic:
            raise JaxalignError(f"method {name!r} in sde mode takes stochastic steps; set scheduler to one of {', '.join(stochastic_schedulers(type(context.sampler.process)))} (got {context.sampler.scheduler!r})")
        length = _chain_length(context, mode)
        if numeric["gamma"] and length % 4:
            raise JaxalignError(f"method {name!r}: the probability regulariser (gamma > 0) needs a noise size divisible by 4, got {length}")
        if static.get("image_gradient", "raw") not in IMAGE_GRADIENTS:
            raise JaxalignError(f"method {name!r}: unknown method_params.image_gradient {static['image_gradient']!r}; valid: {', '.join(IMAGE_GRADIENTS)}")
        if name == "dno_hybrid" and context.popsize < 2:
            raise JaxalignError("method 'dno_hybrid' needs popsize >= 2 (the chain and at least one perturbation)")

    return check


_ADAMW = {"learning_rate": 0.01, "max_grad_norm": 1.0, "weight_decay": 0.01, "gamma": 0.0, "eta": 1.0}

METHODS.register(
    "dno",
    MethodSpec(_dno, needs_gradient=True, differentiates_sampler=True, static={"mode": "ode"}, numeric=_ADAMW, check=_check("dno")),
)
METHODS.register(
    "dno_hybrid",
    MethodSpec(
        _dno_hybrid,
        differentiates_sampler=True,
        static={"mode": "ode", "image_gradient": "raw"},
        numeric={**_ADAMW, "perturbation": 0.01},
        check=_check("dno_hybrid"),
    ),
)
