"""``evolution``: an evosax strategy over a search space (arXiv 2506.00299).

Its ``method_params`` are the strategy's name and options and the space's: ``strategy`` (CoSyNE or any evosax
algorithm), ``strategy_params`` (constructor options, static, and fields of its evosax Params, traced),
``space`` and ``space_params`` (traced). Generation 0 evaluates what the reference evaluates before its first
``solver.step()``: population-based strategies (CoSyNE, GAs) their first archive, the centre latent (member 0,
the baseline) and N(0, 1) draws, as evotorch's Cosyne is initialised; distribution-based strategies (SNES,
CMA-ES, PGPE) only the centre, which is their mean. evosax minimises, so the scores it is told are negated here,
the only place the objective's sign changes after :func:`jaxalign.rewards.oriented`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxalign.errors import check_known, check_numbers
from jaxalign.methods.base import METHODS, Context, Method, MethodSpec, make_search
from jaxalign.search import Search, rank_last
from jaxalign.spaces import PARAM_RANGES, SPACES
from jaxalign.strategies import initial_population_size, is_population_based, make_params, make_strategy, split_options


def shardable_batch(strategy, popsize: int) -> int:
    """The batch a population device axis must divide: every generation's of a population-based strategy
    (CoSyNE reference mode: gcd(16, 24) = 8), the asked one of a distribution strategy (its 1-image
    generation 0 is not sharded)."""
    if not is_population_based(strategy):
        return strategy.population_size
    return math.gcd(strategy.population_size, initial_population_size(strategy))


def _evolution(context: Context, numeric, strategy: str, strategy_params: dict, space: str, space_params: dict) -> Search:
    search_space = SPACES[space]()
    _, param_overrides = split_options(strategy, strategy_params)
    algorithm = make_strategy(strategy, context.popsize, search_space.init(jnp.zeros(context.latent_shape, jnp.float32)), strategy_params)
    defaults = {
        "strategy": make_params(algorithm, param_overrides, strategy),
        "space": {k: jnp.float32(v) for k, v in {**search_space.default_params, **space_params}.items()},
    }
    population_based, first_size = is_population_based(algorithm), initial_population_size(algorithm)

    def init(key, centre, params):
        if population_based:  # a placeholder archive of the right structure; generation 0 initialises it from evaluations
            placeholder = jnp.broadcast_to(centre, (first_size, centre.size))
            return algorithm.init(key, placeholder, jnp.full((first_size,), jnp.inf), params.method["strategy"])
        return algorithm.init(key, centre, params.method["strategy"])

    def propose(key, state, params, problem):
        return algorithm.ask(key, state, params.method["strategy"])

    def update(key, state, solutions, scores, extra, params, first):
        fitness = rank_last(-scores, jnp.isfinite(scores))  # evosax minimises
        if first:  # distribution strategies are already centred at the baseline by ``init``
            return algorithm.init(key, solutions, fitness, params.method["strategy"]) if population_based else state
        return algorithm.tell(key, solutions, fitness, state, params.method["strategy"])[0]

    def latents(params, solutions, problem):
        return jax.vmap(search_space.apply, in_axes=(None, 0, None))(params.method["space"], solutions, problem.centre)

    return make_search(
        context,
        Method(
            init, propose, update, defaults,
            centre=lambda problem, params: search_space.init(problem.centre), latents=latents, first_size=first_size,
            shard_batch=shardable_batch(algorithm, context.popsize),
            best_solution_is=f"{strategy} solution in the {space} space", strategy=strategy,
        ),
    )  # fmt: skip


def _validate(static, numeric) -> None:
    split_options(static["strategy"], static["strategy_params"])  # a known strategy, and options it takes
    space = SPACES[static["space"]]()
    check_known("space_params", static["space_params"], space.default_params, where=f" for space {static['space']!r}")
    check_numbers("space_params", static["space_params"], PARAM_RANGES, where=f" for space {static['space']!r}")


METHODS.register(
    "evolution",
    MethodSpec(_evolution, static={"strategy": "CoSyNE", "strategy_params": {}, "space": "noise", "space_params": {}}, validate=_validate),
)
