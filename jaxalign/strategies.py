"""Evolution strategies: every evosax 0.3 algorithm by its evosax name, plus CoSyNE.

CoSyNE (Gomez, Schmidhuber & Miikkulainen 2008, "Accelerated Neural Evolution through
Cooperatively Coevolved Synapses", JMLR 9) is the best method of arXiv 2506.00299 and is missing
from evosax, so it is written here as one more evosax ``PopulationBasedAlgorithm``: same
constructor (``CoSyNE(population_size=..., solution=...)``), same jitted ``init/ask/tell``, and it
minimises, like every evosax algorithm.

One CoSyNE generation, over an archive of ``population_size`` evaluated solutions:

1. the best quarter of the archive are parents; ``num_children`` children are bred from them by
   tournament selection, one-point crossover and Gaussian mutation;
2. the rest of the new candidates come from the CoSyNE permutation: each coordinate (a
   "subpopulation" of the paper) is shuffled across the archive members independently, either for
   all members (``permute_all``) or for members marked with a probability that grows as their
   fitness gets worse, so good solutions keep their coordinates;
3. after evaluation, the next archive is the best ``population_size`` of the candidates and the
   ``num_elites`` best members of the previous archive.

Defaults follow the paper's reference (evotorch's ``Cosyne``): tournament size 2, mutation
probability 1.0, mutation stdev 0.1, permute all, elitism ratio 0.01 (at least one elite, evosax's
convention), half the candidates are children. Unlike evotorch, which evaluates 1.5 x popsize new
solutions a generation, ``ask`` returns exactly ``population_size`` candidates, so CoSyNE's budget
per generation equals every other strategy's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import evosax
import jax
import jax.numpy as jnp
from evosax.algorithms.base import EvolutionaryAlgorithm
from evosax.algorithms.population_based.base import (
    Params as BaseParams,
    PopulationBasedAlgorithm,
    State as BaseState,
    metrics_fn,
)
from evosax.core.fitness_shaping import identity_fitness_shaping_fn
from evosax.types import Fitness, Population, Solution
from flax import struct

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry


@struct.dataclass
class State(BaseState):
    population: Population
    fitness: Fitness


@struct.dataclass
class Params(BaseParams):
    mutation_std: jax.Array
    mutation_probability: jax.Array


class CoSyNE(PopulationBasedAlgorithm):
    """Cooperative Synapse NeuroEvolution (Gomez et al. 2008) as an evosax algorithm."""

    def __init__(
        self,
        population_size: int,
        solution: Solution,
        tournament_size: int = 2,
        num_children: int | None = None,
        elite_ratio: float = 0.01,
        permute_all: bool = True,
        fitness_shaping_fn: Callable = identity_fitness_shaping_fn,
        metrics_fn: Callable = metrics_fn,
    ):
        super().__init__(population_size, solution, fitness_shaping_fn, metrics_fn)
        if population_size < 2:
            raise ValueError("CoSyNE needs a population of at least 2")
        self.tournament_size = int(tournament_size)
        self.num_children = population_size // 2 if num_children is None else int(num_children)
        if not 0 <= self.num_children <= population_size:
            raise ValueError(f"num_children must be in [0, {population_size}], got {self.num_children}")
        self.num_parents = max(2, population_size // 4)
        self.elite_ratio = elite_ratio
        self.permute_all = permute_all

    @property
    def _default_params(self) -> Params:
        return Params(mutation_std=jnp.float32(0.1), mutation_probability=jnp.float32(1.0))

    def _init(self, key: jax.Array, params: Params) -> State:
        return State(
            population=jnp.full((self.population_size, self.num_dims), jnp.nan),
            fitness=jnp.full((self.population_size,), jnp.inf),
            best_solution=jnp.full((self.num_dims,), jnp.nan),
            best_fitness=jnp.inf,
            generation_counter=0,
        )

    def _ask(self, key: jax.Array, state: State, params: Params) -> tuple[Population, State]:
        key_breed, key_permute = jax.random.split(key)
        fitness = _rankable(state.fitness)
        order = jnp.argsort(fitness)
        parents, parent_fitness = state.population[order[: self.num_parents]], fitness[order[: self.num_parents]]
        children = self._breed(key_breed, parents, parent_fitness, params)
        permuted = self._permute(key_permute, state.population[order], fitness[order])
        population = jnp.concatenate([children, permuted[: self.population_size - self.num_children]])
        return population, state

    def _tell(self, key: jax.Array, population: Population, fitness: Fitness, state: State, params: Params) -> State:
        elites = jnp.argsort(_rankable(state.fitness))[: self.num_elites]
        pool = jnp.concatenate([population, state.population[elites]])
        pool_fitness = jnp.concatenate([_rankable(fitness), _rankable(state.fitness)[elites]])
        keep = jnp.argsort(pool_fitness)[: self.population_size]
        return state.replace(population=pool[keep], fitness=pool_fitness[keep])

    def _breed(self, key, parents, parent_fitness, params: Params) -> jax.Array:
        num_pairs = (self.num_children + 1) // 2
        key_select, key_cut, key_mask, key_noise = jax.random.split(key, 4)
        entrants = jax.random.randint(key_select, (num_pairs, 2, self.tournament_size), 0, self.num_parents)
        winners = jnp.take_along_axis(entrants, jnp.argmin(parent_fitness[entrants], axis=-1)[..., None], axis=-1)[..., 0]
        mother, father = parents[winners[:, 0]], parents[winners[:, 1]]
        # One-point crossover: coordinates before the cut come from one parent, the rest from the other.
        cut = jax.random.randint(key_cut, (num_pairs, 1), 1, max(2, self.num_dims))
        head = jnp.arange(self.num_dims)[None, :] < cut
        children = jnp.concatenate([jnp.where(head, mother, father), jnp.where(head, father, mother)])
        children = children[: self.num_children]
        mutate = jax.random.uniform(key_mask, children.shape) < params.mutation_probability
        noise = params.mutation_std * jax.random.normal(key_noise, children.shape)
        return children + jnp.where(mutate, noise, 0.0)

    def _permute(self, key, population, fitness) -> jax.Array:
        """Shuffle each coordinate among the marked archive members (all of them if permute_all)."""
        n = self.population_size
        key_mark, key_shuffle = jax.random.split(key)
        if self.permute_all:
            marked = jnp.ones((n, self.num_dims), bool)
        else:
            # Gomez et al. 2008, eq. 2: P(mark) = 1 - goodness^(1/dims), goodness in [0, 1].
            spread = jnp.maximum(fitness.max() - fitness.min(), 1e-12)
            goodness = (fitness.max() - fitness) / spread
            prob = 1.0 - goodness ** (1.0 / self.num_dims)
            marked = jax.random.uniform(key_mark, (n, self.num_dims)) < prob[:, None]
        keys = jax.random.split(key_shuffle, self.num_dims)
        return jax.vmap(_shuffle_marked, in_axes=(1, 1, 0), out_axes=1)(population, marked, keys)


def _shuffle_marked(column: jax.Array, marked: jax.Array, key: jax.Array) -> jax.Array:
    """Randomly permute the marked entries of a column among themselves; others stay put."""
    index = jnp.arange(column.shape[0])
    slots = jnp.argsort(jnp.where(marked, index, column.shape[0] + index))  # marked first, in order
    draws = jnp.argsort(jnp.where(marked, jax.random.uniform(key, column.shape), 2.0 + index))  # marked first, shuffled
    return column.at[slots].set(column[draws])


def _rankable(fitness: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(fitness), jnp.inf, fitness)


def _needs_only_popsize_and_solution(cls: type) -> bool:
    required = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return set(required) <= {"population_size", "solution"}


# Algorithms that need more than (population_size, solution), such as evosax's RandomSearch
# (a sampling function) and the SV_* multi-population ones, are left out.
STRATEGIES: Registry[type[EvolutionaryAlgorithm]] = Registry("strategy")
for _name, _cls in evosax.algorithms.algorithms.items():
    if _needs_only_popsize_and_solution(_cls):
        STRATEGIES.register(_name, _cls)
STRATEGIES.register("CoSyNE", CoSyNE)


def is_population_based(strategy: EvolutionaryAlgorithm) -> bool:
    """Population-based algorithms are initialised from an evaluated population, the others from a mean."""
    return isinstance(strategy, PopulationBasedAlgorithm)


def make_strategy(name: str, population_size: int, solution: jax.Array, **kwargs: Any) -> EvolutionaryAlgorithm:
    cls = STRATEGIES[name]
    try:
        return cls(population_size=population_size, solution=solution, **kwargs)
    except (AssertionError, ValueError, TypeError) as error:
        raise JaxalignError(f"cannot build strategy {name!r} with popsize {population_size}: {error or 'invalid arguments'}") from None


def make_params(strategy: EvolutionaryAlgorithm, overrides: Mapping[str, Any]) -> Any:
    """The strategy's default params with some fields replaced; unknown fields are an error."""
    params = strategy.default_params
    fields = set(params.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        name = type(strategy).__name__
        raise JaxalignError(f"unknown strategy_params {', '.join(unknown)} for {name}; valid: {', '.join(sorted(fields)) or '(none)'}")
    return params.replace(**{k: jnp.asarray(v, jnp.asarray(getattr(params, k)).dtype) for k, v in overrides.items()})
