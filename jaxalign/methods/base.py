"""What every alignment method shares: the registry, the build context and the two method shapes.

A method is a :class:`~jaxalign.search.Search` built by a registered :class:`MethodSpec`. Two
shapes cover the non-evolution methods: :func:`noise_method` (propose initial noises, sample and
score them, update a state: best-of-N, zero-order search, DNO) and :func:`trajectory_method`
(act inside the denoising loop through the sampler's :class:`~jaxalign.sampler.Denoiser`: SVDD,
DSearch, DAS, FK steering). Generation 0 of both is the same initial population as evolution's, denoised by the
configured sampler: the centre latent (the unaligned baseline) and ``popsize - 1`` N(0, 1) noises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError, check_known
from jaxalign.registry import Registry
from jaxalign.rewards import Objective
from jaxalign.sampler import Denoiser, Sampler
from jaxalign.schedulers import stochastic_schedulers
from jaxalign.search import (
    Problem,
    Search,
    SearchParams,
    SearchState,
    initial_population,
    initial_state,
    record,
    sample_and_score,
    score,
    sharding_helpers,
)


class MethodSpec(NamedTuple):
    """A registered method: its builder, what it needs and which run-config fields it reads."""

    build: Callable[..., Search] | None = None  # (context, numeric, **static), for methods configured by method_params
    needs_gradient: bool = False  # requires a differentiable objective
    differentiates_sampler: bool = False  # backpropagates through the sampler (built with rematerialisation)
    static: Mapping[str, Any] = {}  # shape- or schedule-determining options with defaults
    numeric: Mapping[str, float] = {}  # traced knobs with defaults (SearchParams.method)
    stochastic_steps: bool = False  # steps inside the denoising loop; needs a scheduler with a stochastic transition
    check: Callable[..., None] | None = None  # (context, static options, numeric options) -> None; raises JaxalignError
    # The run-config fields the method reads; the others of method_fields() must keep their defaults.
    reads: tuple[str, ...] = ("method_params",)
    # (name, spec, context, settings) -> Search, where settings holds the ``reads`` fields; None: from method_params.
    configure: Callable[..., Search] | None = None


METHODS: Registry[MethodSpec] = Registry("method")


def method_fields() -> frozenset[str]:
    """The run-config fields that configure some method (a method reads some of them)."""
    return frozenset(field for spec in METHODS.values() for field in spec.reads)


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


def build_method(name: str, context: Context, settings: Mapping[str, Any] | None = None) -> Search:
    """Build ``name`` for ``context`` from ``settings``, the run-config fields it reads (missing ones
    take their defaults; for most methods that is ``method_params``: static options and numeric defaults)."""
    spec = METHODS[name]
    settings = dict(settings or {})
    unread = sorted(set(settings) - set(spec.reads))
    if unread:
        raise JaxalignError(f"method {name!r} does not take {', '.join(unread)}; it takes {', '.join(spec.reads)}")
    if spec.needs_gradient and not context.objective.differentiable:
        raise JaxalignError(f"method {name!r} needs a differentiable reward; {', '.join(context.objective.default_weights)} is black-box (try dno_hybrid or a gradient-free method)")
    if spec.stochastic_steps and not context.sampler.stochastic:
        raise JaxalignError(f"method {name!r} takes stochastic denoising steps; set scheduler to one of {', '.join(stochastic_schedulers(type(context.sampler.process)))} (got {context.sampler.scheduler!r})")
    return (spec.configure or configure_from_method_params)(name, spec, context, settings)


def configure_from_method_params(name: str, spec: MethodSpec, context: Context, settings: Mapping[str, Any]) -> Search:
    """The usual configuration: ``method_params`` split into the spec's static options and numeric knobs."""
    options = dict(settings.get("method_params") or {})
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
    numeric = {}
    for k, v in spec.numeric.items():
        value = options.get(k, v)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JaxalignError(f"method_params.{k} for method {name!r} must be a finite number, got {value!r}")
        numeric[k] = float(value)
    if spec.check is not None:
        spec.check(context, static, numeric)
    return spec.build(context, numeric, **static)


def default_params_fn(context: Context, numeric: Mapping[str, float]):
    def default_params(reward_weights=None, guidance_scale=7.5, method_overrides=None):
        return SearchParams(
            strategy=None,
            space={},
            reward_weights={k: jnp.float32(v) for k, v in (reward_weights or context.objective.default_weights).items()},
            guidance_scale=jnp.float32(guidance_scale),
            method={k: jnp.float32(v) for k, v in {**numeric, **(method_overrides or {})}.items()},
        )

    return default_params


def finite_scores(total):
    """The objective's scores (higher is better) with non-finite ones at -inf."""
    return jnp.where(jnp.isfinite(total), total, -jnp.inf)


def value(context: Context, denoiser: Denoiser, model_params, problem, params, clean):
    """The objective of the images decoded from clean latents, non-finite at -inf (the methods' value function)."""
    total, _ = score(context.objective, model_params, problem, params, denoiser.decode(clean))
    return finite_scores(total)


def noise_method(context: Context, numeric, propose, update, init_method_state, evaluate_fn=None, cost=None, solution_size=None) -> Search:
    """A method over initial noises: ``propose`` a population, sample and score it, ``update`` its state.

    ``propose(key, method_state, params, problem) -> noises [P, L]`` and
    ``update(key, method_state, noises, scores, extra, params, first) -> method_state``, with the objective's
    scores (higher is better, non-finite -> -inf) and ``first`` a Python bool (generation 0).
    ``evaluate_fn(key, model_params, problem, params, noises)`` replaces plain sampling in later
    generations (DNO's value-and-gradient); it returns (total, components, images, extra). ``cost``:
    the budget of a later generation (default: one sampler run per member). ``solution_size`` L: the
    length of a solution when it holds more than the initial latent (DNO's sde mode; generation 0's
    solutions are its initial latents preceded by zeros).
    """
    popsize = context.popsize
    names = tuple(context.objective.default_weights)
    dim = math.prod(context.latent_shape)
    solution_size = solution_size or dim
    mesh = context.make_mesh(popsize)
    shard_population, replicate = sharding_helpers(mesh)
    plain_cost = {"nfe": popsize * context.sampler.num_steps, "images": popsize}
    cost = cost or plain_cost

    def plain_evaluate(key, model_params, problem, params, noises):
        latents = shard_population(noises[:, -dim:].reshape(-1, *context.latent_shape))
        return (*sample_and_score(context.sampler, context.objective, model_params, problem, params, latents), None)

    evaluate = evaluate_fn or plain_evaluate

    def init(key, problem: Problem, params: SearchParams) -> SearchState:
        centre = jnp.pad(problem.centre.reshape(-1), (solution_size - dim, 0))
        return initial_state(key, init_method_state(centre, params), centre, names, context.image_shape)

    def generation(first: bool):
        def step(model_params, problem: Problem, params: SearchParams, state: SearchState):
            key, propose_key, evaluate_key, update_key = jax.random.split(state.key, 4)
            if first:
                noises = initial_population(propose_key, problem.centre.reshape(-1), popsize)
                noises = jnp.pad(noises, ((0, 0), (solution_size - dim, 0)))
                total, components, images, extra = plain_evaluate(evaluate_key, model_params, problem, params, noises)
            else:
                noises = propose(propose_key, state.method_state, params, problem)
                total, components, images, extra = evaluate(evaluate_key, model_params, problem, params, noises)
            scores = finite_scores(total)
            method_state = update(update_key, state.method_state, noises, scores, extra, params, first)
            spent = plain_cost if first else cost
            return replicate(record(state, key, method_state, noises, total, components, images, spent))

        return step

    return Search(
        init=jax.jit(init),
        start=jax.jit(generation(True)),
        step=jax.jit(generation(False)),
        default_params=default_params_fn(context, numeric),
        popsize=popsize,
        nfe_per_generation=cost["nfe"],
        images_per_generation=cost["images"],
        vjp_nfe_per_generation=cost.get("vjp_nfe", 0),
        best_solution_is="initial noise" if solution_size == dim else "initial noise and every step's noise",
        initial_nfe=plain_cost["nfe"],
        initial_images=plain_cost["images"],
        best_latent=lambda params, solution, problem: solution[-dim:].reshape(context.latent_shape),
        mesh=mesh,
    )


def trajectory_method(context: Context, numeric, guided_run, cost: Mapping[str, Any]) -> Search:
    """A method that acts inside the denoising loop.

    Generation 0 denoises the initial population with the configured sampler (the baseline, as every
    method's generation 0); later generations run ``guided_run(key, denoiser, model_params, problem,
    params) -> (clean latents [K, ...], spent)`` from fresh noise, where ``spent`` is that run's
    budget (``cost`` is its planned or expected value). ``best_solution`` is the final (clean)
    latent of the best returned sample.
    """
    popsize, sampler, objective = context.popsize, context.sampler, context.objective
    names = tuple(objective.default_weights)
    mesh = context.make_mesh(popsize)
    shard_population, replicate = sharding_helpers(mesh)

    def init(key, problem: Problem, params: SearchParams) -> SearchState:
        return initial_state(key, jnp.zeros((), jnp.int32), problem.centre.reshape(-1), names, context.image_shape)

    def finish(model_params, problem, params, state, key, final, spent):
        images = sampler.decode(model_params, final)
        total, components = score(objective, model_params, problem, params, images)
        return replicate(record(state, key, state.method_state, final.reshape(final.shape[0], -1), total, components, images, spent))

    def start(model_params, problem: Problem, params: SearchParams, state: SearchState):
        key, population_key = jax.random.split(state.key)
        noises = initial_population(population_key, problem.centre.reshape(-1), popsize)
        latents = shard_population(noises.reshape(-1, *context.latent_shape))
        final = sampler.denoise(model_params, latents, problem.context, problem.uncond_context, params.guidance_scale)
        return finish(model_params, problem, params, state, key, final, {"nfe": popsize * sampler.num_steps, "images": popsize})

    def step(model_params, problem: Problem, params: SearchParams, state: SearchState):
        key, run_key = jax.random.split(state.key)
        denoiser = sampler.bind(model_params, problem.context, problem.uncond_context, params.guidance_scale)
        final, spent = guided_run(run_key, denoiser, model_params, problem, params)
        return finish(model_params, problem, params, state, key, final, spent)

    return Search(
        init=jax.jit(init),
        start=jax.jit(start),
        step=jax.jit(step),
        default_params=default_params_fn(context, numeric),
        popsize=popsize,
        nfe_per_generation=int(cost["nfe"]),
        images_per_generation=int(cost["images"]),
        vjp_nfe_per_generation=int(cost.get("vjp_nfe", 0)),
        best_solution_is="final latent",
        initial_nfe=popsize * sampler.num_steps,
        initial_images=popsize,
        best_latent=lambda params, solution, problem: solution.reshape(context.latent_shape),
        mesh=mesh,
    )
