"""Evolution strategies: every evosax 0.3 algorithm by its evosax name, plus CoSyNE.

CoSyNE (Gomez, Schmidhuber & Miikkulainen 2008, "Accelerated Neural Evolution through
Cooperatively Coevolved Synapses", JMLR 9) is the best method of arXiv 2506.00299 and is missing
from evosax. The paper's reference code (github pjjajal/diffusion-trajectory) runs evotorch 0.6's
``Cosyne``; :class:`CoSyNE` is that algorithm, operator by operator, as one more evosax
``PopulationBasedAlgorithm`` (same constructor shape, jitted ``init/ask/tell``, minimising).

One generation, over an *archive* of evaluated solutions (evotorch ``Cosyne._step``):

1. parents: the best ``archive_size // 4`` of the archive;
2. children: ``num_children`` (evotorch: cross-over rate 2.0, i.e. twice the number of parents,
   rounded to even) bred by tournaments of ``tournament_size`` among the parents (the fitter
   entrant wins), the winners split in halves that pair up, each pair one-point crossed (or SBX
   with ``eta``) into two mirrored children, then Gaussian mutation of each gene with probability
   ``mutation_probability`` and stdev ``mutation_stdev``;
3. permutation: each coordinate is shuffled across the archive members it marks: all of them
   (``permute_all``) or each with probability ``1 - u^(1/n)``, where ``u`` is the member's
   centred rank + 0.5 (1 for the best, 0 for the worst) and ``n`` the number of coordinates;
4. children + permuted archive are evaluated, and with the ``num_elites`` best of the old archive
   the best ``archive_size`` become the next archive (elites are not re-evaluated: the sampler is
   deterministic, so their scores are known; evotorch scores them again).

Two modes map the user's ``popsize`` onto this:

* ``reference``: ``popsize`` is evotorch's popsize, the archive; a generation evaluates
  ``popsize + num_children`` images (24 at popsize 16). This reproduces the paper's tables.
* ``equal_budget`` (default): a generation evaluates exactly ``popsize`` images, like every other
  strategy and method. The archive keeps the reference's selection ratio, the best
  ``round(2/3 * popsize)`` of what was evaluated, and children fill the rest
  (popsize 16: archive 11, 5 children from 2 parents).

Reference defaults (pjjajal/diffusion-trajectory ``configs/sd.yaml``) are :data:`REFERENCE_DEFAULTS`,
applied when the user does not set them; strategies the reference did not use keep evosax's.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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
from evosax.core.optimizer import clipup
from evosax.types import Fitness, Population, Solution
from flax import struct

from jaxalign.errors import JaxalignError, check_known, check_numbers
from jaxalign.registry import Registry

COSYNE_MODES = ("equal_budget", "reference")


@struct.dataclass
class State(BaseState):
    population: Population  # the archive [archive_size, dims]
    fitness: Fitness


@struct.dataclass
class Params(BaseParams):
    mutation_stdev: jax.Array
    mutation_probability: jax.Array
    eta: jax.Array  # SBX distribution index (used when the crossover is "sbx")


def _num_children_from_rate(num_parents: int, rate: float = 2.0) -> int:
    """evotorch's ``CrossOver._compute_num_tournaments`` for a cross-over rate: an even count near rate * parents."""
    scaled = num_parents * rate
    high, low = math.ceil(scaled), math.floor(scaled)
    if high == low:
        return high + (high % 2)
    return high if high % 2 == 0 else low


class CoSyNE(PopulationBasedAlgorithm):
    """Cooperative Synapse NeuroEvolution as evotorch 0.6's ``Cosyne`` runs it (see the module docstring)."""

    def __init__(
        self,
        population_size: int,
        solution: Solution,
        mode: str = "equal_budget",
        tournament_size: int = 2,
        mutation_stdev: float = 0.1,
        mutation_probability: float = 1.0,
        permute_all: bool = True,
        num_elites: int | None = None,
        elitism_ratio: float | None = 0.01,
        num_children: int | None = None,
        eta: float | None = None,
        fitness_shaping_fn: Callable = identity_fitness_shaping_fn,
        metrics_fn: Callable = metrics_fn,
    ):
        if mode not in COSYNE_MODES:
            raise ValueError(f"mode must be one of {', '.join(COSYNE_MODES)}, got {mode!r}")
        if mutation_stdev is None or mutation_probability is None:
            raise ValueError("mutation_stdev and mutation_probability must be numbers (mutation_stdev=0 disables mutation, evotorch's None)")
        for name, value in (("mutation_stdev", mutation_stdev), ("mutation_probability", mutation_probability), ("eta", eta), ("elitism_ratio", elitism_ratio)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for name, value in (("tournament_size", tournament_size), ("num_elites", num_elites), ("num_children", num_children)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not isinstance(permute_all, bool):
            raise ValueError(f"permute_all must be true or false, got {permute_all!r}")
        if population_size < 2:
            raise ValueError(f"CoSyNE needs popsize >= 2, got {population_size}")
        if int(tournament_size) < 1:
            raise ValueError(f"tournament_size must be >= 1, got {tournament_size}")
        if mode == "reference":
            archive_size = int(population_size)
            parents = archive_size // 4
            children = _num_children_from_rate(parents) if num_children is None else int(num_children)
            if num_children is not None and children % 2:
                raise ValueError(f"num_children must be even in reference mode (evotorch pairs parents), got {children}")
            ask_size = archive_size + children
        else:
            ask_size = int(population_size)
            archive_size = max(2, round(2 * ask_size / 3)) if num_children is None else ask_size - int(num_children)
            children = ask_size - archive_size
            parents = max(1, archive_size // 4)  # small popsizes still breed (evotorch's popsize // 4 would be 0)
        if not 0 <= children < ask_size or archive_size < 2:
            raise ValueError(f"num_children must be in [0, {ask_size - 2}] at popsize {population_size}, got {children}")
        if children and parents < 1:
            raise ValueError(f"an archive of {archive_size} has no parents (popsize // 4 = 0); use popsize >= 4 or num_children=0")
        if num_elites is not None:  # an explicit count wins over the (default) ratio; evotorch takes one of the two
            elites = int(num_elites)
        else:
            elites = int(archive_size * elitism_ratio) if elitism_ratio is not None else 0
        if not 0 <= elites <= archive_size:
            raise ValueError(f"num_elites must be in [0, {archive_size}] (the archive), got {elites}")
        if not 0 <= mutation_probability <= 1:
            raise ValueError(f"mutation_probability must be in [0, 1], got {mutation_probability}")
        if mutation_stdev < 0:
            raise ValueError(f"mutation_stdev must be >= 0, got {mutation_stdev}")
        if eta is not None and eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(ask_size, solution, fitness_shaping_fn, metrics_fn)
        self.mode = mode
        self.first_population_size = int(population_size)  # generation 0: the user's popsize, in both modes
        self.archive_size = archive_size
        self.num_parents = parents
        self.num_children = children
        self.num_cosyne_elites = elites
        self.tournament_size = int(tournament_size)
        self.permute_all = bool(permute_all)
        self.crossover = "one_point" if eta is None else "sbx"
        self._defaults = (float(mutation_stdev), float(mutation_probability), 0.0 if eta is None else float(eta))

    @property
    def _default_params(self) -> Params:
        stdev, probability, eta = self._defaults
        return Params(mutation_stdev=jnp.float32(stdev), mutation_probability=jnp.float32(probability), eta=jnp.float32(eta))

    def _init(self, key: jax.Array, params: Params) -> State:
        return State(
            population=jnp.full((self.archive_size, self.num_dims), jnp.nan),
            fitness=jnp.full((self.archive_size,), jnp.inf),
            best_solution=jnp.full((self.num_dims,), jnp.nan),
            best_fitness=jnp.inf,
            generation_counter=0,
        )

    def init(self, key: jax.Array, population: Population, fitness: Fitness, params: Params) -> State:
        """The archive is the best ``archive_size`` of an evaluated initial population (any size >= it)."""
        keep = jnp.argsort(_rankable(fitness))[: self.archive_size]
        return super().init(key, jax.tree.map(lambda x: x[keep], population), fitness[keep], params)

    def _ask(self, key: jax.Array, state: State, params: Params) -> tuple[Population, State]:
        key_breed, key_permute = jax.random.split(key)
        children = self.breed(key_breed, state.population, state.fitness, params)
        permuted = self.permute(key_permute, state.population, state.fitness)
        return jnp.concatenate([children, permuted]), state

    def _tell(self, key: jax.Array, population: Population, fitness: Fitness, state: State, params: Params) -> State:
        elites = jnp.argsort(_rankable(state.fitness))[: self.num_cosyne_elites]
        pool = jnp.concatenate([population, state.population[elites]])
        pool_fitness = jnp.concatenate([_rankable(fitness), _rankable(state.fitness)[elites]])
        keep = jnp.argsort(pool_fitness, stable=True)[: self.archive_size]
        return state.replace(population=pool[keep], fitness=pool_fitness[keep])

    def breed(self, key, archive, fitness, params: Params) -> jax.Array:
        """``num_children`` children of the best quarter of the archive: tournaments, crossover, mutation."""
        if self.num_children == 0:
            return jnp.zeros((0, self.num_dims), archive.dtype)
        order = jnp.argsort(_rankable(fitness))[: self.num_parents]
        parents, parent_fitness = archive[order], _rankable(fitness)[order]
        num_pairs = (self.num_children + 1) // 2
        key_select, key_cross, key_mask, key_noise = jax.random.split(key, 4)
        entrants = jax.random.randint(key_select, (2 * num_pairs, self.tournament_size), 0, self.num_parents)
        winners = jnp.take_along_axis(entrants, jnp.argmin(parent_fitness[entrants], axis=-1)[:, None], axis=-1)[:, 0]
        first, second = parents[winners[:num_pairs]], parents[winners[num_pairs:]]
        children = CROSSOVERS[self.crossover](key_cross, first, second, params)[: self.num_children]
        mutate = jax.random.uniform(key_mask, children.shape) <= params.mutation_probability
        noise = params.mutation_stdev * jax.random.normal(key_noise, children.shape)
        return children + jnp.where(mutate, noise, 0.0)

    def permute(self, key, archive, fitness) -> jax.Array:
        """Shuffle each coordinate among the marked archive members (all of them if ``permute_all``)."""
        n = archive.shape[0]
        key_mark, key_shuffle = jax.random.split(key)
        if self.permute_all:
            marked = jnp.ones((n, self.num_dims), bool)
        else:
            marked = jax.random.uniform(key_mark, (n, self.num_dims)) <= mark_probability(fitness, self.num_dims)[:, None]
        keys = jax.random.split(key_shuffle, self.num_dims)
        return jax.vmap(_shuffle_marked, in_axes=(1, 1, 0), out_axes=1)(archive, marked, keys)


def mark_probability(fitness: jax.Array, num_dims: int) -> jax.Array:
    """evotorch's CosynePermutation: P(mark) = 1 - (rank + 0.5)^(1/dims) with centred ranks
    (best 0.5, worst -0.5, evenly spaced), so the best is never permuted and the worst always is."""
    n = fitness.shape[0]
    from_worst = jnp.argsort(jnp.argsort(-_rankable(fitness), stable=True))  # 0 for the worst
    return 1.0 - (from_worst / max(n - 1, 1)) ** (1.0 / num_dims)


def one_point_crossover(key, first, second, params) -> jax.Array:
    """Two mirrored children per pair, cut at a gene in [1, dims - 1] (evotorch's OnePointCrossOver)."""
    dims = first.shape[-1]
    cut = jax.random.randint(key, (first.shape[0], 1), 1, max(2, dims))
    tail = jnp.arange(dims)[None, :] >= cut
    return jnp.concatenate([jnp.where(tail, first, second), jnp.where(tail, second, first)])


def simulated_binary_crossover(key, first, second, params) -> jax.Array:
    """Deb & Agrawal's SBX with distribution index ``eta``, two mirrored children per pair (evotorch's)."""
    u = jax.random.uniform(key, first.shape)
    exponent = 1.0 / (params.eta + 1.0)
    beta = jnp.where(u > 0.5, (1.0 / (2.0 * (1.0 - u))) ** exponent, (2.0 * u) ** exponent)
    return jnp.concatenate([0.5 * ((1 + beta) * first + (1 - beta) * second), 0.5 * ((1 + beta) * second + (1 - beta) * first)])


CROSSOVERS = {"one_point": one_point_crossover, "sbx": simulated_binary_crossover}


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


class Defaults(NamedTuple):
    """A strategy's defaults where the paper's reference set them: constructor options and Params fields."""

    options: Mapping[str, Any] = {}
    params: Mapping[str, float] = {}
    note: str = ""


# pjjajal/diffusion-trajectory configs/sd.yaml, the evotorch solvers it builds, centred at the latents.
REFERENCE_DEFAULTS: dict[str, Defaults] = {
    "CoSyNE": Defaults(note="tournament 2, mutation stdev 0.1 with probability 1, permute all, elitism ratio 0.01"),
    "SNES": Defaults(params={"std_init": 0.2}, note="stdev 0.2; centre and stdev learning rates are evotorch's and evosax's common defaults"),
    "Sep_CMA_ES": Defaults(params={"std_init": 0.1}, note="stdev 0.1 (evotorch CMAES separable=True; its csa_squared has no evosax counterpart)"),
    "CMA_ES": Defaults(params={"std_init": 0.1}, note="stdev 0.1, as the reference's CMAES"),
    "PGPE": Defaults(
        options={"optimizer": clipup(learning_rate=1.0, max_velocity=2.0)},
        params={"std_init": 0.2, "std_lr": 1.0, "std_max_change": 0.2},
        note="stdev 0.2, ClipUp centre learning rate 1.0 (max speed 2.0, momentum 0.9), stdev learning rate 1.0, max change 0.2",
    ),
}


def is_population_based(strategy: EvolutionaryAlgorithm) -> bool:
    """Population-based algorithms are initialised from an evaluated population, the others from a mean."""
    return isinstance(strategy, PopulationBasedAlgorithm)


def initial_population_size(strategy: EvolutionaryAlgorithm) -> int:
    """How many solutions generation 0 evaluates: the first population, or only the centre for distributions."""
    if not is_population_based(strategy):
        return 1
    return getattr(strategy, "first_population_size", strategy.population_size)


def _constructor_options(cls: type) -> set[str]:
    return set(inspect.signature(cls).parameters) - {"population_size", "solution", "fitness_shaping_fn", "metrics_fn", "optimizer"}


def split_options(name: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """``strategy_params`` split into constructor options (static) and Params fields (traced).

    A name that is both (CoSyNE's mutation knobs) goes to both: the constructor checks it and
    makes it the default, the Params field carries it traced.
    """
    cls = STRATEGIES[name]
    constructor, fields = _constructor_options(cls), _param_fields(cls)
    check_known("strategy_params", options, constructor | fields, where=f" for {name}")
    return {k: v for k, v in options.items() if k in constructor}, {k: v for k, v in options.items() if k in fields}


@functools.cache
def _param_fields(cls: type) -> frozenset[str]:
    # Params fields are only known from an instance; a small one (popsize 16, 2 numbers) costs nothing.
    return frozenset(cls(population_size=16, solution=jnp.zeros(2)).default_params.__dataclass_fields__)


def make_strategy(name: str, population_size: int, solution: jax.Array, options: Mapping[str, Any] | None = None) -> EvolutionaryAlgorithm:
    """Build ``name`` with the reference's constructor defaults, overridden by ``options`` (strategy_params)."""
    cls = STRATEGIES[name]
    constructor, _ = split_options(name, options or {})
    kwargs = {**REFERENCE_DEFAULTS.get(name, Defaults()).options, **constructor}
    try:
        return cls(population_size=population_size, solution=solution, **kwargs)
    except (AssertionError, ValueError, TypeError) as error:
        raise JaxalignError(f"cannot build strategy {name!r} with popsize {population_size}: {error or 'invalid arguments'}") from None


# Declared ranges of Params fields (closed; every field must also be finite): spreads and probabilities.
PARAM_RANGES = {"std_init": (0.0, math.inf), "mutation_stdev": (0.0, math.inf), "mutation_probability": (0.0, 1.0), "std_max_change": (0.0, math.inf)}


def make_params(strategy: EvolutionaryAlgorithm, overrides: Mapping[str, Any], name: str | None = None) -> Any:
    """The strategy's params: evosax's defaults, then the reference's, then ``overrides`` (Params fields only)."""
    params = strategy.default_params
    fields = set(params.__dataclass_fields__)
    name = name or type(strategy).__name__
    values = {**REFERENCE_DEFAULTS.get(name, Defaults()).params, **overrides}
    check_known("strategy_params", overrides, fields, where=f" for {name}")
    check_numbers("strategy_params", overrides, PARAM_RANGES, where=f" for {name}")
    converted = {}
    for key, value in values.items():
        if key not in fields:
            continue
        try:
            converted[key] = jnp.asarray(float(value), jnp.asarray(getattr(params, key)).dtype)
        except (TypeError, ValueError):
            raise JaxalignError(f"strategy_params.{key} must be a number, got {value!r}") from None
    return params.replace(**converted)
