"""What every alignment method shares: the registry, the build context, the method protocol and its search builder.

A method is a :class:`Method` in evosax's shape, pure ``init`` / ``propose`` / ``update`` over its own state, and
:func:`make_search` turns it into a :class:`~jaxalign.search.Search`, owning for every method what they share:
generation 0 (the centre latent, the unaligned baseline, and N(0, 1) draws, denoised by the configured sampler),
evaluation (denoise, decode, score), best tracking, budgets, sharding and the direction (scores are higher-is-better
everywhere; :func:`jaxalign.rewards.oriented` applied the sign once). Methods over initial noises (evolution,
best-of-N, zero-order search, DNO) propose solutions that map to initial latents; methods that act inside the
denoising loop (SVDD, DSearch, DAS, FK steering) replace the evaluation through :func:`trajectory_method`.
A registered :class:`MethodSpec` builds a method's search from ``method_params``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError, check_known
from jaxalign.registry import Registry
from jaxalign.rewards import Objective
from jaxalign.sampler import Sampler
from jaxalign.schedulers import stochastic_schedulers
from jaxalign.search import Problem, Search, SearchParams, SearchState, initial_population, initial_state, record, score, sharding_helpers


class MethodSpec(NamedTuple):
    """A registered method: its builder, what it needs and its options (``method_params``)."""

    build: Callable[..., Search]  # (context, numeric, **static) -> Search
    needs_gradient: bool = False  # requires a differentiable objective
    differentiates_sampler: bool = False  # backpropagates through the sampler (built with rematerialisation)
    static: Mapping[str, Any] = {}  # shape- or schedule-determining options (names, counts, nested option mappings) with defaults
    numeric: Mapping[str, float] = {}  # traced knobs with defaults (SearchParams.method)
    stochastic_steps: bool = False  # steps inside the denoising loop; needs a scheduler with a stochastic transition
    check: Callable[..., None] | None = None  # (context, static options, numeric options) -> None; raises JaxalignError
    validate: Callable[..., None] | None = None  # (static options, numeric options) -> None: the checks that need no model


METHODS: Registry[MethodSpec] = Registry("method")


def _single_device(batch: int):
    return None


class Context(NamedTuple):
    """What every builder receives. ``make_mesh(batch)`` gives the device mesh for a population whose
    every generation's batch is a multiple of ``batch`` (None: no sharding); each method knows its batch."""

    sampler: Sampler
    objective: Objective
    image_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]
    popsize: int
    make_mesh: Callable[[int], Any] = _single_device


def method_options(name: str, method_params: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``method_params`` of method ``name`` as (static options, numeric knobs), defaults filled in and types checked;
    the method's model-free checks run too (a config is checked with these before any model loads)."""
    spec = METHODS[name]
    options = dict(method_params or {})
    check_known("method_params", options, {*spec.static, *spec.numeric}, where=f" for method {name!r}")
    static = {k: options.get(k, v) for k, v in spec.static.items()}
    for k, v in static.items():
        default = spec.static[k]
        if type(default) in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise JaxalignError(f"method_params.{k} for method {name!r} must be a number, got {v!r}")
        if type(default) is int:  # a count (candidates, steps) takes whole numbers
            if not math.isfinite(v) or not float(v).is_integer():
                raise JaxalignError(f"method_params.{k} for method {name!r} must be a whole number, got {v!r}")
            static[k] = int(v)
        if isinstance(default, str) and not isinstance(v, str):
            raise JaxalignError(f"method_params.{k} for method {name!r} must be a name, got {v!r}")
        if isinstance(default, Mapping):
            if not isinstance(v, Mapping):
                raise JaxalignError(f"method_params.{k} for method {name!r} must be a mapping of options, got {v!r}")
            static[k] = dict(v)
    numeric = {}
    for k, v in spec.numeric.items():
        value = options.get(k, v)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JaxalignError(f"method_params.{k} for method {name!r} must be a finite number, got {value!r}")
        numeric[k] = float(value)
    if spec.validate is not None:
        spec.validate(static, numeric)
    return static, numeric


def build_method(name: str, context: Context, method_params: Mapping[str, Any] | None = None) -> Search:
    """Build method ``name`` for ``context`` from its ``method_params`` (missing options take their defaults)."""
    spec = METHODS[name]
    if spec.needs_gradient and not context.objective.differentiable:
        raise JaxalignError(f"method {name!r} needs a differentiable reward; {', '.join(context.objective.default_weights)} is black-box (try dno_hybrid or a gradient-free method)")
    if spec.stochastic_steps and not context.sampler.stochastic:
        raise JaxalignError(f"method {name!r} takes stochastic denoising steps; set scheduler to one of {', '.join(stochastic_schedulers(type(context.sampler.process)))} (got {context.sampler.scheduler!r})")
    static, numeric = method_options(name, method_params)
    if spec.check is not None:
        spec.check(context, static, numeric)
    return spec.build(context, numeric, **static)


def finite_scores(total):
    """The objective's scores (higher is better) with non-finite ones at -inf."""
    return jnp.where(jnp.isfinite(total), total, -jnp.inf)


def value(score_images, denoiser, clean):
    """The objective of the images decoded from clean latents, non-finite at -inf (the methods' value function)."""
    total, _ = score_images(denoiser.decode(clean))
    return finite_scores(total)


class Evaluated(NamedTuple):
    """A generation's evaluation: the objective's totals, components and images, and what ``update`` is told."""

    total: jax.Array  # [N], raw (non-finite where the objective was)
    components: dict[str, jax.Array]
    images: jax.Array
    extra: Any = None  # passed on to ``update`` (DNO's gradient)
    final_latents: Any = None  # the images' clean latents [N, ...], recorded instead of the solutions where the method says so
    spent: Mapping[str, Any] | None = None  # this generation's budget when it is not the planned one (DSearch's random cost)


def _keep(key, state, *unused):
    return state


class Method(NamedTuple):
    """One alignment method in evosax's shape: pure functions over the method's own state.

    ``propose`` and ``update`` see the objective's scores (higher is better, non-finite at -inf); ``first`` is a
    Python bool, true at generation 0, whose solutions :func:`make_search` draws itself. ``evaluate`` scores images
    with ``score_images(images) -> (total [N], components)``, the objective bound to the step's reward weights and
    prompt, so no method handles the rewards' parameters.
    """

    init: Callable  # (key, centre solution [L], params) -> method state
    propose: Callable | None = None  # (key, state, params, problem) -> (solutions [P, L], state); None: no solutions
    update: Callable = _keep  # (key, state, solutions, scores [N], extra, params, first) -> state
    defaults: Any = None  # traced knobs' defaults, SearchParams.method (a dict of float32 scalars, or the method's pytree)
    evaluate: Callable | None = None  # later generations: (key, model_params, score_images, problem, params, solutions) -> Evaluated
    centre: Callable | None = None  # (problem, params) -> the baseline's solution [L]; None: the centre latent, flattened
    latents: Callable | None = None  # (params, solutions [N, L], problem) -> initial latents; None: solutions' last latent-size entries
    first_size: int | None = None  # solutions in generation 0; None: popsize
    first_population: Callable | None = None  # (key, problem, params) -> generation 0's solutions; None: the centre and N(0, 1) draws
    cost: Mapping[str, Any] | None = None  # planned budget of a later generation; None: one sampler run per proposed solution
    shard_batch: int | None = None  # the batch a population device axis must divide; None: popsize
    records_final_latent: bool = False  # record each image's final (clean) latent (Evaluated.final_latents), not its solution
    best_solution_is: str = "initial noise"  # what ``best_solution`` holds, in words (summary.json)
    strategy: str | None = None  # the evosax strategy an evolution runs (summary.json, tables)


class GenerationKeys(NamedTuple):
    """A later generation's keys (generation 0 swaps the middle two: it updates with ``propose`` and draws its
    population with ``update``, the order evolution's streams were made in)."""

    carry: jax.Array  # the next state's key
    propose: jax.Array
    update: jax.Array
    evaluate: jax.Array


def generation_keys(key) -> GenerationKeys:
    """The keys one generation uses: three split (as evolution's streams were made), a fourth folded in for evaluation."""
    carry, propose, update = jax.random.split(key, 3)
    return GenerationKeys(carry, propose, update, jax.random.fold_in(propose, 1))


def make_search(context: Context, method: Method) -> Search:
    """The search of ``method``: ``init``, the compiled generation 0 ``start`` and the one-generation ``step``.

    One generation: propose -> solutions to initial latents -> denoise (CFG) -> decode -> score -> update -> track
    the best, under one ``jax.jit``. With a mesh (``context.make_mesh``) the population's latents and images are
    sharded over its "population" axis; states and reports stay replicated.
    """
    sampler, objective, popsize = context.sampler, context.objective, context.popsize
    names = tuple(objective.default_weights)
    dim = math.prod(context.latent_shape)
    mesh = context.make_mesh(method.shard_batch or popsize)
    shard_population, replicate = sharding_helpers(mesh)
    centre = method.centre or (lambda problem, params: problem.centre.reshape(-1))
    to_latents = method.latents or (lambda params, solutions, problem: solutions[:, -dim:].reshape(-1, *context.latent_shape))
    first_size = method.first_size or popsize
    first_population = method.first_population or (lambda key, problem, params: initial_population(key, centre(problem, params), first_size))
    runs = lambda n: {"nfe": n * sampler.num_steps, "images": n}  # noqa: E731  (n sampler runs)
    cost = dict(method.cost or runs(popsize))

    def init(key, problem: Problem, params: SearchParams) -> SearchState:
        key, init_key = jax.random.split(key)
        centre_solution = centre(problem, params)
        return initial_state(key, method.init(init_key, centre_solution, params), centre_solution, names, context.image_shape)

    def sample(model_params, score_images, problem: Problem, params: SearchParams, solutions) -> Evaluated:
        latents = shard_population(to_latents(params, solutions, problem))
        final = sampler.denoise(model_params, latents, problem.context, problem.uncond_context, params.guidance_scale)
        images = sampler.decode(model_params, final)
        total, components = score_images(images)
        return Evaluated(total, components, images, final_latents=final)

    def finish(state, key, method_state, update_key, solutions, evaluated: Evaluated, params, first: bool):
        scores = finite_scores(evaluated.total)
        method_state = method.update(update_key, method_state, solutions, scores, evaluated.extra, params, first)
        final = evaluated.final_latents
        recorded = final.reshape(final.shape[0], -1) if method.records_final_latent else solutions
        spent = evaluated.spent or (runs(first_size) if first else cost)
        return replicate(record(state, key, method_state, recorded, evaluated.total, evaluated.components, evaluated.images, spent))

    def scorer(reward_params, problem: Problem, params: SearchParams):
        return lambda images: score(objective, reward_params, problem, params, images)

    def start(model_params, reward_params, problem: Problem, params: SearchParams, state: SearchState):
        keys = generation_keys(state.key)
        solutions = first_population(keys.update, problem, params)
        evaluated = sample(model_params, scorer(reward_params, problem, params), problem, params, solutions)
        return finish(state, keys.carry, state.method_state, keys.propose, solutions, evaluated, params, True)

    def step(model_params, reward_params, problem: Problem, params: SearchParams, state: SearchState):
        keys = generation_keys(state.key)
        solutions, method_state = (None, state.method_state) if method.propose is None else method.propose(keys.propose, state.method_state, params, problem)
        evaluate = sample if method.evaluate is None else functools.partial(method.evaluate, keys.evaluate)
        evaluated = evaluate(model_params, scorer(reward_params, problem, params), problem, params, solutions)
        return finish(state, keys.carry, method_state, keys.update, solutions, evaluated, params, False)

    def default_params(reward_weights=None, guidance_scale=7.5, method_overrides=None):
        overrides = {k: jnp.float32(v) if isinstance(v, (int, float)) else v for k, v in (method_overrides or {}).items()}
        return SearchParams(
            reward_weights={k: jnp.float32(v) for k, v in (reward_weights or objective.default_weights).items()},
            guidance_scale=jnp.float32(guidance_scale),
            method={**(method.defaults or {}), **overrides},
        )

    def best_latent(params, solution, problem):
        if method.records_final_latent:
            return solution.reshape(context.latent_shape)
        return to_latents(params, solution[None], problem)[0]

    return Search(
        init=jax.jit(init),
        start=jax.jit(start),
        step=jax.jit(step),
        default_params=default_params,
        popsize=popsize,
        nfe_per_generation=int(cost["nfe"]),
        images_per_generation=int(cost["images"]),
        vjp_nfe_per_generation=int(cost.get("vjp_nfe", 0)),
        best_solution_is=method.best_solution_is,
        strategy=method.strategy,
        initial_nfe=first_size * sampler.num_steps,
        initial_images=first_size,
        best_latent=best_latent,
        mesh=mesh,
    )


def numeric_defaults(numeric: Mapping[str, float]) -> dict[str, jax.Array]:
    """A method's numeric knobs as the traced defaults of ``SearchParams.method``."""
    return {k: jnp.float32(v) for k, v in numeric.items()}


def trajectory_method(context: Context, numeric, guided_run, cost: Mapping[str, Any]) -> Search:
    """A method that acts inside the denoising loop.

    Generation 0 denoises the initial population with the configured sampler (the baseline, as every method's
    generation 0); later generations run ``guided_run(key, denoiser, score_images, problem, params) -> (clean
    latents [K, ...], spent)`` from fresh noise, where ``spent`` is that run's budget (``cost`` is its planned or
    expected value). ``best_solution`` is the final (clean) latent of the best returned sample.
    """
    sampler = context.sampler

    def evaluate(key, model_params, score_images, problem, params, solutions) -> Evaluated:
        denoiser = sampler.bind(model_params, problem.context, problem.uncond_context, params.guidance_scale)
        final, spent = guided_run(key, denoiser, score_images, problem, params)
        images = sampler.decode(model_params, final)
        total, components = score_images(images)
        return Evaluated(total, components, images, final_latents=final, spent=spent)

    no_state = lambda key, centre, params: jnp.zeros((), jnp.int32)  # noqa: E731
    method = Method(no_state, defaults=numeric_defaults(numeric), evaluate=evaluate, cost=cost, records_final_latent=True, best_solution_is="final latent")
    return make_search(context, method)
