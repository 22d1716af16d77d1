"""``evolution``: an evosax strategy over a search space (arXiv 2506.00299), :func:`~jaxalign.search.make_search`.

It reads the run config's ``strategy``, ``strategy_params``, ``space`` and ``space_params`` (not ``method_params``):
the strategy's constructor options are static, its Params fields and the space's knobs become the traced defaults
of the search's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from jaxalign.errors import check_known, check_numbers
from jaxalign.methods.base import METHODS, Context, MethodSpec
from jaxalign.search import Search, make_search
from jaxalign.spaces import PARAM_RANGES, SPACES
from jaxalign.strategies import initial_population_size, is_population_based, make_params, make_strategy, split_options


def shardable_batch(strategy, popsize: int) -> int:
    """The batch a population device axis must divide: every generation's of a population-based strategy
    (CoSyNE reference mode: gcd(16, 24) = 8), the asked one of a distribution strategy (its 1-image
    generation 0 is not sharded)."""
    if not is_population_based(strategy):
        return strategy.population_size
    return math.gcd(strategy.population_size, initial_population_size(strategy))


def _configure(name: str, spec: MethodSpec, context: Context, settings: Mapping[str, Any]) -> Search:
    space_name = settings.get("space", "noise")
    space_overrides = dict(settings.get("space_params") or {})
    space = SPACES[space_name]()
    check_known("space_params", space_overrides, space.default_params, where=f" for space {space_name!r}")
    check_numbers("space_params", space_overrides, PARAM_RANGES, where=f" for space {space_name!r}")
    strategy_name = settings.get("strategy", "CoSyNE")
    options = dict(settings.get("strategy_params") or {})
    _, param_overrides = split_options(strategy_name, options)
    strategy = make_strategy(strategy_name, context.popsize, space.init(jnp.zeros(context.latent_shape, jnp.float32)), options)
    strategy_params = make_params(strategy, param_overrides, strategy_name)
    search = make_search(
        sampler=context.sampler, space=space, strategy=strategy, objective=context.objective,
        image_shape=context.image_shape, mesh=context.make_mesh(shardable_batch(strategy, context.popsize)),
    )  # fmt: skip
    generic_defaults = search.default_params

    def default_params(**overrides):
        return generic_defaults(**{"strategy_overrides": strategy_params, "space_overrides": space_overrides, **overrides})

    return search._replace(default_params=default_params, best_solution_is=f"{strategy_name} solution in the {space_name} space", strategy=strategy_name)


METHODS.register("evolution", MethodSpec(reads=("strategy", "strategy_params", "space", "space_params"), configure=_configure))
