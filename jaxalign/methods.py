"""Alignment methods in one framework: evolution and its baselines and siblings share the sampler,
rewards, runner and outputs, so comparing them means changing ``config.method``.

Every method is a :class:`~jaxalign.search.Search`: pure ``init`` and a jitted one-generation
``step`` over a :class:`~jaxalign.search.SearchState`, with its budget per generation in UNet
evaluations (NFE) and decoded images. Generation 0 of every method here evaluates the same initial
population (the centre latent, i.e. the unaligned baseline, and ``popsize - 1`` N(0, 1) noises)
with the deterministic sampler; ``evolution`` evaluates what its strategy uses (see
:func:`~jaxalign.search.make_search`).

* ``evolution``: an evosax strategy over a search space (arXiv 2506.00299), :func:`make_search`.
* ``random``: best-of-N; ``popsize`` fresh Gaussian noises per generation.
* ``zero_order``: zero-order search of Ma et al. 2025 (arXiv 2501.09732): ``popsize`` neighbours
  of a pivot noise at cosine similarity ``cosine`` (same norm); the pivot moves to the best
  neighbour only when it improves on the pivot.
* ``dno``: Direct Noise Optimization (Tang et al. 2024, arXiv 2405.18881): gradient ascent on the
  initial noises through the whole sampler (``jax.checkpoint`` per denoising step) with optax
  AdamW and gradient clipping, ``popsize`` noises optimised in parallel; an optional penalty keeps
  each noise's norm near the Gaussian shell sqrt(d). Needs a differentiable reward.
* ``dno_zo``: DNO with a zeroth-order gradient: ``popsize / 2`` antithetic Gaussian perturbations
  of one noise estimate the reward's gradient, fed to the same optimiser. Black-box rewards work.
* ``svdd``: SVDD-PM (Li et al. 2024, arXiv 2408.08252): at every denoising step each particle
  draws ``num_candidates`` stochastic next latents, scores each by the reward of its predicted
  clean image (Tweedie) and keeps the best (or samples at a temperature).
* ``dsearch``: dynamic search (Li, Uehara et al. 2025, arXiv 2503.02039): a beam over ``popsize``
  slots; searches at an exponential schedule of steps (denser near the end), keeps a beam whose
  width drops exponentially, and optionally looks ahead with deterministic steps to score.
* ``das``: Diffusion Alignment as Sampling (Kim et al., ICLR 2025, arXiv 2501.05803): sequential
  Monte Carlo over the trajectory towards p(x) exp(r(x) / alpha), with tempering, proposals
  shifted by the reward gradient at the predicted clean image, and resampling (systematic,
  stratified, multinomial, residual) when the effective sample size drops below a threshold.

The stochastic steps of svdd, dsearch and das are DDIM with ``eta`` (1: DDPM's posterior
variance), so they need ``scheduler="ddim"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry
from jaxalign.rewards import Objective
from jaxalign.sampler import Sampler
from jaxalign.schedulers import predict_x0_and_eps
from jaxalign.search import (
    Direction,
    Problem,
    Search,
    SearchParams,
    SearchState,
    initial_population,
    initial_state,
    make_search,
    record,
    sample_and_score,
    score,
    sharding_helpers,
)


class MethodSpec(NamedTuple):
    """A registered method: its builder and what it needs."""

    build: Callable[..., Search]
    needs_gradient: bool = False  # requires a differentiable objective
    uses_strategy: bool = False  # uses config.strategy / strategy_params and the search space
    static: Mapping[str, Any] = {}  # shape- or schedule-determining options with defaults
    numeric: Mapping[str, float] = {}  # traced knobs with defaults (SearchParams.method)
    needs_ddim: bool = False


METHODS: Registry[MethodSpec] = Registry("method")


class Context(NamedTuple):
    """What every builder receives."""

    sampler: Sampler
    objective: Objective
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    popsize: int
    maximize: bool
    mesh: Any


def build_method(name: str, context: Context, *, space=None, strategy=None, options: Mapping[str, Any] | None = None) -> Search:
    """Build ``name`` for ``context``; ``options`` are its static options and numeric defaults."""
    spec = METHODS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.static) - set(spec.numeric))
    if unknown:
        valid = ", ".join(sorted({*spec.static, *spec.numeric})) or "(none)"
        raise JaxalignError(f"unknown method_params {', '.join(unknown)} for method {name!r}; valid: {valid}")
    if spec.needs_gradient and not context.objective.differentiable:
        raise JaxalignError(f"method {name!r} needs a differentiable reward; {', '.join(context.objective.default_weights)} is black-box (try dno_zo or a gradient-free method)")
    if spec.needs_ddim and context.sampler.scheduler != "ddim":
        raise JaxalignError(f"method {name!r} takes stochastic DDIM steps; set scheduler='ddim' (got {context.sampler.scheduler!r})")
    if spec.uses_strategy:
        return spec.build(context, space=space, strategy=strategy)
    static = {k: options.get(k, v) for k, v in spec.static.items()}
    numeric = {k: float(options.get(k, v)) for k, v in spec.numeric.items()}
    return spec.build(context, numeric, **static)


def _evolution(context: Context, space, strategy) -> Search:
    return make_search(
        sampler=context.sampler, space=space, strategy=strategy, objective=context.objective,
        image_shape=context.image_shape, maximize=context.maximize, mesh=context.mesh,
    )  # fmt: skip


METHODS.register("evolution", MethodSpec(_evolution, uses_strategy=True))


def _default_params_fn(context: Context, numeric: Mapping[str, float]):
    def default_params(strategy_overrides=None, space_overrides=None, reward_weights=None, guidance_scale=7.5, method_overrides=None):
        return SearchParams(
            strategy=None,
            space={},
            reward_weights={k: jnp.float32(v) for k, v in (reward_weights or context.objective.default_weights).items()},
            guidance_scale=jnp.float32(guidance_scale),
            method={k: jnp.float32(v) for k, v in {**numeric, **(method_overrides or {})}.items()},
        )

    return default_params


def _noise_method(context: Context, numeric, propose, update, init_method_state, evaluate_fn=None, gradient: bool = False) -> Search:
    """A method over initial noises: ``propose`` a population, sample and score it, ``update`` its state.

    ``propose(key, method_state, params, problem) -> noises [P, d]`` and
    ``update(key, method_state, noises, scores, extra, params) -> method_state``, with scores in the
    maximised direction (non-finite -> -inf). ``evaluate_fn`` replaces plain sampling (DNO's
    value-and-gradient); it returns (total, components, images, extra). ``gradient``: each generation
    also backpropagates through the sampler once per member (counted in ``vjp_nfe``).
    """
    popsize, direction = context.popsize, Direction(context.maximize)
    names = tuple(context.objective.default_weights)
    shard_population, replicate = sharding_helpers(context.mesh)

    def plain_evaluate(model_params, problem, params, noises):
        latents = shard_population(noises.reshape(-1, *context.latent_shape))
        return (*sample_and_score(context.sampler, context.objective, model_params, problem, params, latents), None)

    evaluate = evaluate_fn or plain_evaluate

    def init(key, problem: Problem, params: SearchParams) -> SearchState:
        centre = problem.centre.reshape(-1)
        return initial_state(key, init_method_state(centre, params), centre, names, context.image_shape, direction)

    def step(model_params, problem: Problem, params: SearchParams, state: SearchState):
        key, propose_key, update_key, population_key = jax.random.split(state.key, 4)
        first = state.generation == 0
        noises = jax.lax.cond(
            first,
            lambda: initial_population(population_key, problem.centre.reshape(-1), popsize),
            lambda: propose(propose_key, state.method_state, params, problem),
        )
        total, components, images, extra = evaluate(model_params, problem, params, noises)
        scores = _signed_scores(context, total)
        method_state = update(update_key, state.method_state, noises, scores, extra, params, first)
        return replicate(record(state, key, method_state, noises, total, components, images, direction))

    nfe = popsize * context.sampler.num_steps
    return Search(
        init=jax.jit(init),
        step=jax.jit(step),
        default_params=_default_params_fn(context, numeric),
        popsize=popsize,
        nfe_per_generation=nfe,
        images_per_generation=popsize,
        vjp_nfe_per_generation=nfe if gradient else 0,
        best_solution_is="initial noise",
        initial_nfe=nfe,
        initial_images=popsize,
        initial_vjp_nfe=nfe if gradient else 0,
    )


def _random(context: Context, numeric) -> Search:
    def propose(key, method_state, params, problem):
        return jax.random.normal(key, (context.popsize, problem.centre.size))

    def update(key, method_state, noises, scores, extra, params, first):
        return method_state

    return _noise_method(context, numeric, propose, update, lambda centre, params: jnp.zeros((), jnp.int32))


METHODS.register("random", MethodSpec(_random))


class PivotState(NamedTuple):
    pivot: jax.Array  # [d]
    score: jax.Array  # the pivot's score, maximised direction


def sphere_neighbours(key, pivot, cosine, count: int):
    """``count`` random points with the pivot's norm at cosine similarity ``cosine`` to it."""
    norm = jnp.linalg.norm(pivot)
    direction = pivot / norm
    u = jax.random.normal(key, (count, pivot.size))
    u = u - (u @ direction)[:, None] * direction  # orthogonal to the pivot
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    return norm * (cosine * direction + jnp.sqrt(1.0 - cosine**2) * u)


def _zero_order(context: Context, numeric) -> Search:
    def propose(key, state: PivotState, params, problem):
        return sphere_neighbours(key, state.pivot, params.method["cosine"], context.popsize)

    def update(key, state: PivotState, noises, scores, extra, params, first):
        best = jnp.argmax(scores)
        moves = first | (scores[best] > state.score)
        return PivotState(jnp.where(moves, noises[best], state.pivot), jnp.where(moves, scores[best], state.score))

    return _noise_method(
        context, numeric, propose, update, lambda centre, params: PivotState(centre, jnp.float32(-jnp.inf))
    )


METHODS.register("zero_order", MethodSpec(_zero_order, numeric={"cosine": 0.95}))


def _dno_optimizer(learning_rate, max_grad_norm, weight_decay):
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adamw(learning_rate, weight_decay=weight_decay))


_OPTIMIZER_KNOBS = ("learning_rate", "max_grad_norm", "weight_decay")


def _optimizer() -> optax.GradientTransformation:
    """AdamW after gradient clipping; its knobs are set from the traced method params by :func:`_with_knobs`."""
    return optax.inject_hyperparams(_dno_optimizer)(**{k: 0.0 for k in _OPTIMIZER_KNOBS})


def _with_knobs(opt_state, params: SearchParams, batch_shape=()):
    knobs = {k: jnp.broadcast_to(params.method[k], batch_shape) for k in _OPTIMIZER_KNOBS}
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **knobs})


class OptimizerState(NamedTuple):
    noises: jax.Array  # [P, d] (dno) or [d] (dno_zo)
    opt_state: Any


def noise_loss(context: Context) -> Callable:
    """DNO's loss ``(model_params, problem, params, noises [P, d]) -> (sum of per-member losses, aux)``:
    minus the reward (in the maximised direction) of each noise's image, plus the shell penalty.
    Members are independent, so its gradient holds each member's own gradient."""
    sign = 1.0 if context.maximize else -1.0
    dim = int(np.prod(context.latent_shape))
    shard_population, _ = sharding_helpers(context.mesh)

    def loss(model_params, problem, params, noises):
        latents = shard_population(noises.reshape(-1, *context.latent_shape))
        total, components, images = sample_and_score(context.sampler, context.objective, model_params, problem, params, latents)
        shell = params.method["shell_penalty"] * (jnp.linalg.norm(noises, axis=1) / np.sqrt(dim) - 1.0) ** 2
        return jnp.sum(-sign * total + shell), (total, components, images)

    return loss


def _dno(context: Context, numeric) -> Search:
    popsize = context.popsize
    dim = int(np.prod(context.latent_shape))
    optimizer = _optimizer()

    def evaluate(model_params, problem, params, noises):
        (_, (total, components, images)), grad = jax.value_and_grad(noise_loss(context), argnums=3, has_aux=True)(
            model_params, problem, params, noises
        )
        return total, components, images, jnp.where(jnp.isfinite(grad), grad, 0.0)

    def propose(key, state: OptimizerState, params, problem):
        return state.noises

    def update(key, state: OptimizerState, noises, scores, grad, params, first):
        opt_state = jax.lax.cond(first, lambda: jax.vmap(optimizer.init)(noises), lambda: state.opt_state)
        opt_state = _with_knobs(opt_state, params, (popsize,))
        updates, opt_state = jax.vmap(optimizer.update)(grad, opt_state, noises)
        return OptimizerState(noises + updates, opt_state)

    def init_state(centre, params):
        placeholder = jnp.zeros((popsize, dim), jnp.float32)
        return OptimizerState(placeholder, _with_knobs(jax.vmap(optimizer.init)(placeholder), params, (popsize,)))

    return _noise_method(context, numeric, propose, update, init_state, evaluate_fn=evaluate, gradient=True)


METHODS.register(
    "dno",
    MethodSpec(_dno, needs_gradient=True, numeric={"learning_rate": 0.01, "max_grad_norm": 1.0, "weight_decay": 0.0, "shell_penalty": 0.0}),
)


def _dno_zo(context: Context, numeric) -> Search:
    popsize = context.popsize
    if popsize % 2:
        raise JaxalignError(f"method 'dno_zo' evaluates antithetic pairs; popsize must be even, got {popsize}")
    half = popsize // 2
    dim = int(np.prod(context.latent_shape))
    optimizer = _optimizer()

    def propose(key, state: OptimizerState, params, problem):
        u = jax.random.normal(key, (half, dim))
        mu = params.method["perturbation"]
        return jnp.concatenate([state.noises + mu * u, state.noises - mu * u])

    def update(key, state: OptimizerState, noises, scores, extra, params, first):
        def start():
            z = noises[jnp.argmax(scores)]
            return OptimizerState(z, _with_knobs(optimizer.init(z), params))

        def descend():
            mu = params.method["perturbation"]
            u = (noises[:half] - state.noises) / mu
            difference = scores[:half] - scores[half:]
            difference = jnp.where(jnp.isfinite(difference), difference, 0.0)
            ascent = jnp.mean(difference[:, None] * u, axis=0) / (2.0 * mu)  # antithetic estimate of the gradient
            updates, opt_state = optimizer.update(-ascent, _with_knobs(state.opt_state, params), state.noises)
            return OptimizerState(state.noises + updates, opt_state)

        return jax.lax.cond(first, start, descend)

    def init_state(centre, params):
        return OptimizerState(centre, _with_knobs(optimizer.init(centre), params))

    return _noise_method(context, numeric, propose, update, init_state)


METHODS.register(
    "dno_zo",
    MethodSpec(_dno_zo, numeric={"learning_rate": 0.01, "max_grad_norm": 1.0, "weight_decay": 0.0, "perturbation": 0.05}),
)


# ---- Methods that act during denoising: SVDD, DSearch, DAS -------------------------------------


def _stochastic_step(sampler: Sampler, x, out, i, eta):
    """DDIM step ``i`` with noise level ``eta``: (mean, std, predicted clean latent) of x_{t-1} given x_t."""
    s = sampler.schedule
    alpha, sigma = s.alpha[i], s.sigma[i]
    alpha_prev, sigma_prev = s.coefficients["alpha_prev"][i], s.coefficients["sigma_prev"][i]
    x0, eps = predict_x0_and_eps(sampler.prediction_type, x, out, alpha, sigma)
    std = eta * jnp.sqrt(jnp.maximum((sigma_prev**2 / sigma**2) * (1.0 - alpha**2 / alpha_prev**2), 0.0))
    mean = alpha_prev * x0 + jnp.sqrt(jnp.maximum(sigma_prev**2 - std**2, 0.0)) * eps
    return mean, std, x0


def _predicted_clean(sampler: Sampler, x, out, i):
    s = sampler.schedule
    return predict_x0_and_eps(sampler.prediction_type, x, out, s.alpha[i], s.sigma[i])[0]


def _trajectory_method(context: Context, numeric, guided_run, nfe: int, images: int, vjp_nfe: int = 0) -> Search:
    """Generation 0 samples the initial population deterministically (the baseline); later
    generations run ``guided_run(key, model_params, problem, params) -> final latents [P, c, h, w]``
    from fresh noise. ``best_solution`` is the final (clean) latent of the best particle."""
    popsize, sampler, objective = context.popsize, context.sampler, context.objective
    direction = Direction(context.maximize)
    names = tuple(context.objective.default_weights)
    _, replicate = sharding_helpers(context.mesh)

    def init(key, problem: Problem, params: SearchParams) -> SearchState:
        return initial_state(key, jnp.zeros((), jnp.int32), problem.centre.reshape(-1), names, context.image_shape, direction)

    def step(model_params, problem: Problem, params: SearchParams, state: SearchState):
        key, run_key, population_key = jax.random.split(state.key, 3)

        def plain():
            noises = initial_population(population_key, problem.centre.reshape(-1), popsize)
            latents = noises.reshape(-1, *context.latent_shape)
            return jax.lax.scan(
                lambda x, i: (sampler_step(model_params, problem, params, x, i), None), latents, jnp.arange(sampler.num_steps)
            )[0]

        def sampler_step(model_params, problem, params, x, i):
            out = sampler.guided_output(model_params, x, i, problem.context, problem.uncond_context, params.guidance_scale)
            return _stochastic_step(sampler, x, out, i, 0.0)[0]

        final = jax.lax.cond(state.generation == 0, plain, lambda: guided_run(run_key, model_params, problem, params))
        images = sampler.decode(model_params, final)
        total, components = score(objective, model_params, problem, params, images)
        solutions = final.reshape(popsize, -1)
        return replicate(record(state, key, state.method_state, solutions, total, components, images, direction))

    plain_nfe = popsize * sampler.num_steps
    return Search(
        init=jax.jit(init),
        step=jax.jit(step),
        default_params=_default_params_fn(context, numeric),
        popsize=popsize,
        nfe_per_generation=nfe,
        images_per_generation=images,
        vjp_nfe_per_generation=vjp_nfe,
        best_solution_is="final latent",
        initial_nfe=plain_nfe,
        initial_images=popsize,
    )


def _signed_scores(context: Context, total):
    signed = total if context.maximize else -total
    return jnp.where(jnp.isfinite(signed), signed, -jnp.inf)


def _value(context: Context, model_params, problem, params, clean):
    """Reward of the images decoded from clean latents, in the maximised direction."""
    total, _ = score(context.objective, model_params, problem, params, context.sampler.decode(model_params, clean))
    return _signed_scores(context, total)


def _svdd(context: Context, numeric, num_candidates: int) -> Search:
    popsize, sampler = context.popsize, context.sampler
    steps, m = sampler.num_steps, int(num_candidates)

    def guided_run(key, model_params, problem, params):
        def output(x, i):
            return sampler.guided_output(model_params, x, i, problem.context, problem.uncond_context, params.guidance_scale)

        def propose(key, x, out, i):
            mean, std, _ = _stochastic_step(sampler, x, out, i, params.method["eta"])
            noise = jax.random.normal(key, (popsize, m, *x.shape[1:]))
            return (mean[:, None] + std * noise).reshape(popsize * m, *x.shape[1:])

        def select(key, candidates, values, *extras):
            values = values.reshape(popsize, m)
            temperature = params.method["temperature"]
            sampled = jax.random.categorical(key, values / jnp.maximum(temperature, 1e-12), axis=1)
            choice = jnp.where(temperature > 0, sampled, jnp.argmax(values, axis=1))
            pick = lambda a: a.reshape(popsize, m, *a.shape[1:])[jnp.arange(popsize), choice]  # noqa: E731
            return pick(candidates), *map(pick, extras)

        def body(carry, i):
            x, out, key = carry
            key, noise_key, select_key = jax.random.split(key, 3)
            candidates = propose(noise_key, x, out, i)
            candidate_out = output(candidates, i + 1)
            values = _value(context, model_params, problem, params, _predicted_clean(sampler, candidates, candidate_out, i + 1))
            x, out = select(select_key, candidates, values, candidate_out)
            return (x, out, key), None

        key, start_key, last_key, select_key = jax.random.split(key, 4)
        x = jax.random.normal(start_key, (popsize, *context.latent_shape))
        (x, out, key), _ = jax.lax.scan(body, (x, output(x, 0), key), jnp.arange(steps - 1))
        candidates = propose(last_key, x, out, steps - 1)  # the last step lands on clean latents
        (x,) = select(select_key, candidates, _value(context, model_params, problem, params, candidates))
        return x

    nfe = popsize + popsize * m * (steps - 1)
    return _trajectory_method(context, numeric, guided_run, nfe=nfe, images=popsize * m * steps + popsize)


METHODS.register("svdd", MethodSpec(_svdd, static={"num_candidates": 4}, numeric={"eta": 1.0, "temperature": 0.0}, needs_ddim=True))


def search_schedule(num_steps: int, search_fraction: float, rate: float) -> np.ndarray:
    """DSearch's exponential search schedule: which of ``num_steps`` steps search, denser near the end.

    ``round(search_fraction * num_steps)`` searches; the k-th one, counted back from the last step,
    sits ``(T - 1) (e^{rate k / S} - 1) / (e^{rate} - 1)`` steps before it (at least one step after
    the previous one), so the gaps between searches grow exponentially towards the start.
    """
    searches = min(num_steps, max(1, round(search_fraction * num_steps)))
    k = np.arange(searches)
    spread = np.expm1(rate * k / searches) / np.expm1(rate) if rate > 0 else k / searches
    back = np.floor((num_steps - 1) * spread).astype(int)
    for j in range(1, searches):
        back[j] = max(back[j], back[j - 1] + 1)
    mask = np.zeros(num_steps, bool)
    mask[num_steps - 1 - back[back < num_steps]] = True
    return mask


def beam_widths(popsize: int, num_steps: int, drop_rate) -> jax.Array:
    """DSearch's exponential drop schedule: the beam width at each step, from ``popsize`` down."""
    widths = jnp.round(popsize * jnp.exp(-drop_rate * jnp.arange(num_steps) / max(num_steps - 1, 1)))
    return jnp.clip(widths, 1, popsize).astype(jnp.int32)


def _dsearch(context: Context, numeric, lookahead: int, search_fraction: float, search_rate: float) -> Search:
    popsize, sampler = context.popsize, context.sampler
    steps, lookahead = sampler.num_steps, int(lookahead)
    mask = search_schedule(steps, float(search_fraction), float(search_rate))

    def guided_run(key, model_params, problem, params):
        def output(x, i):
            return sampler.guided_output(model_params, x, i, problem.context, problem.uncond_context, params.guidance_scale)

        widths = beam_widths(popsize, steps, params.method["drop_rate"])

        def keep_best(x, out, values, i):
            # Survivors are the beam's top widths[i] slots; every slot continues one of them.
            source = jnp.argsort(-values)[jnp.arange(popsize) % widths[i]]
            return x[source], out[source]

        def look_ahead(x, out, i):
            """Clean estimate after up to ``lookahead`` deterministic steps from x at step index i."""

            def one(j, carry):
                x, out = carry
                index = jnp.minimum(i + j, steps - 1)
                valid = i + j + 1 < steps
                x_next = _stochastic_step(sampler, x, out, index, 0.0)[0]
                out_next = output(x_next, jnp.minimum(index + 1, steps - 1))
                return jnp.where(valid, x_next, x), jnp.where(valid, out_next, out)

            x, out = jax.lax.fori_loop(0, lookahead, one, (x, out))
            last = jnp.minimum(i + lookahead, steps - 1)
            return _predicted_clean(sampler, x, out, last)

        def body(carry, i):
            x, out, key = carry
            key, noise_key = jax.random.split(key)
            mean, std, _ = _stochastic_step(sampler, x, out, i, params.method["eta"])
            x = mean + std * jax.random.normal(noise_key, x.shape)
            out = output(x, i + 1)

            def search():
                values = _value(context, model_params, problem, params, look_ahead(x, out, i + 1))
                return keep_best(x, out, values, i)

            x, out = jax.lax.cond(jnp.asarray(mask)[i], search, lambda: (x, out))
            return (x, out, key), None

        key, start_key, last_key = jax.random.split(key, 3)
        x = jax.random.normal(start_key, (popsize, *context.latent_shape))
        (x, out, key), _ = jax.lax.scan(body, (x, output(x, 0), key), jnp.arange(steps - 1))
        mean, std, _ = _stochastic_step(sampler, x, out, steps - 1, params.method["eta"])
        x = mean + std * jax.random.normal(last_key, x.shape)
        return keep_best(x, x, _value(context, model_params, problem, params, x), steps - 1)[0]

    searched = [i for i in range(steps - 1) if mask[i]]
    lookahead_nfe = popsize * sum(min(lookahead, steps - 2 - i) for i in searched)
    images = popsize * (len(searched) + 1)
    return _trajectory_method(context, numeric, guided_run, nfe=popsize * steps + lookahead_nfe, images=images + popsize)


METHODS.register(
    "dsearch",
    MethodSpec(
        _dsearch,
        static={"lookahead": 0, "search_fraction": 0.5, "search_rate": 1.5},
        numeric={"eta": 1.0, "drop_rate": 2.0},
        needs_ddim=True,
    ),
)


# ---- Resampling for SMC ---------------------------------------------------------------------------

RESAMPLERS: Registry[Callable[[jax.Array, jax.Array], jax.Array]] = Registry("resampling scheme")


def _inverse_cdf(weights, points):
    return jnp.clip(jnp.searchsorted(jnp.cumsum(weights), points, side="right"), 0, weights.shape[0] - 1)


@RESAMPLERS.register("multinomial")
def multinomial(key, weights):
    """K independent draws from the weights."""
    return jax.random.categorical(key, jnp.log(weights), shape=weights.shape)


@RESAMPLERS.register("stratified")
def stratified(key, weights):
    """One uniform draw in each of K equal strata of [0, 1)."""
    k = weights.shape[0]
    return _inverse_cdf(weights, (jnp.arange(k) + jax.random.uniform(key, (k,))) / k)


@RESAMPLERS.register("systematic")
def systematic(key, weights):
    """One uniform offset shared by K evenly spaced points."""
    k = weights.shape[0]
    return _inverse_cdf(weights, (jnp.arange(k) + jax.random.uniform(key)) / k)


@RESAMPLERS.register("residual")
def residual(key, weights):
    """floor(K w_i) copies of each particle, the remaining slots drawn from the residual weights."""
    k = weights.shape[0]
    counts = jnp.floor(k * weights).astype(jnp.int32)
    kept = jnp.sum(counts)
    deterministic = jnp.repeat(jnp.arange(k), counts, total_repeat_length=k)
    remainder = k * weights - counts
    drawn = jax.random.categorical(key, jnp.log(jnp.maximum(remainder, 0.0)), shape=(k,))
    return jnp.where(jnp.arange(k) < kept, deterministic, drawn)


def tempering(num_steps: int, gamma) -> jax.Array:
    """DAS's exponential tempering, normalised to run from 0 (pure noise) to 1 (clean): [num_steps + 1]."""
    i = jnp.arange(num_steps + 1, dtype=jnp.float32)
    return jnp.expm1(jnp.log1p(gamma) * i) / jnp.expm1(jnp.log1p(gamma) * num_steps)


def _das(context: Context, numeric, resampling: str) -> Search:
    popsize, sampler = context.popsize, context.sampler
    steps = sampler.num_steps
    resample = RESAMPLERS[resampling]

    def guided_run(key, model_params, problem, params):
        alpha = params.method["alpha"]
        lam = tempering(steps, params.method["tempering_gamma"])

        def value_and_grad(x, i):
            def value(x):
                out = sampler.guided_output(model_params, x, i, problem.context, problem.uncond_context, params.guidance_scale)
                v = _value(context, model_params, problem, params, _predicted_clean(sampler, x, out, i))
                return jnp.sum(jnp.where(jnp.isfinite(v), v, 0.0)), (v, out)

            (_, (v, out)), grad = jax.value_and_grad(value, has_aux=True)(x)
            return v, jnp.where(jnp.isfinite(grad), grad, 0.0), out

        def body(carry, i):
            x, v, grad, out, log_w, key = carry
            key, noise_key, resample_key = jax.random.split(key, 3)
            mean, std, _ = _stochastic_step(sampler, x, out, i, params.method["eta"])
            variance = jnp.maximum(std**2, 1e-12)
            shifted = mean + variance * lam[i] * grad / alpha  # reward-guided proposal
            x_new = shifted + std * jax.random.normal(noise_key, x.shape)
            v_new, grad_new, out_new = value_and_grad(x_new, i + 1)
            sq = lambda a: jnp.sum(a.reshape(popsize, -1) ** 2, axis=1)  # noqa: E731
            log_p_over_q = (sq(x_new - shifted) - sq(x_new - mean)) / (2 * variance)
            log_w = log_w + log_p_over_q + (lam[i + 1] * v_new - lam[i] * v) / alpha
            log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
            log_w = jnp.where(jnp.all(log_w == -jnp.inf), 0.0, log_w)
            weights = jax.nn.softmax(log_w)
            ess = 1.0 / jnp.sum(weights**2)
            index = jnp.where(ess < params.method["ess_threshold"] * popsize, resample(resample_key, weights), jnp.arange(popsize))
            log_w = jnp.where(ess < params.method["ess_threshold"] * popsize, 0.0, log_w)
            take = lambda a: a[index]  # noqa: E731
            return (take(x_new), take(v_new), take(grad_new), take(out_new), log_w, key), None

        key, start_key, last_key = jax.random.split(key, 3)
        x = jax.random.normal(start_key, (popsize, *context.latent_shape))
        v, grad, out = value_and_grad(x, 0)
        carry = (x, v, grad, out, jnp.zeros(popsize), key)
        (x, v, grad, out, log_w, key), _ = jax.lax.scan(body, carry, jnp.arange(steps - 1))
        mean, std, _ = _stochastic_step(sampler, x, out, steps - 1, params.method["eta"])
        shifted = mean + jnp.maximum(std**2, 1e-12) * lam[steps - 1] * grad / alpha
        return shifted + std * jax.random.normal(last_key, x.shape)

    return _trajectory_method(
        context, numeric, guided_run, nfe=popsize * steps, images=popsize * steps + popsize, vjp_nfe=popsize * steps
    )


METHODS.register(
    "das",
    MethodSpec(
        _das,
        needs_gradient=True,
        static={"resampling": "systematic"},
        numeric={"alpha": 0.01, "tempering_gamma": 0.1, "ess_threshold": 0.5, "eta": 1.0},
        needs_ddim=True,
    ),
)
