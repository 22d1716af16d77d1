"""Every registered strategy in a Python loop and in lax.scan; CoSyNE's own behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign import strategies
from jaxalign.strategies import REFERENCE_DEFAULTS, STRATEGIES, CoSyNE, is_population_based, make_params, make_strategy, split_options

DIMS, POPSIZE, GENERATIONS = 6, 8, 4


def shifted_sphere(x):
    return jnp.sum((x - 0.5) ** 2, axis=-1)


def start(strategy, key):
    params = strategy.default_params
    if is_population_based(strategy):
        population = jax.random.normal(key, (POPSIZE, DIMS))
        return strategy.init(key, population, shifted_sphere(population), params), params
    return strategy.init(key, jnp.zeros(DIMS), params), params


def generation(strategy, params, state, key):
    ask_key, tell_key = jax.random.split(key)
    population, state = strategy.ask(ask_key, state, params)
    state, _ = strategy.tell(tell_key, population, shifted_sphere(population), state, params)
    return state


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_loop_and_scan_agree(name):
    strategy = make_strategy(name, POPSIZE, jnp.zeros(DIMS))
    state, params = start(strategy, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), GENERATIONS)

    looped = state
    for key in keys:
        looped = generation(strategy, params, looped, key)

    scanned, _ = jax.lax.scan(lambda s, k: (generation(strategy, params, s, k), None), state, keys)

    assert int(looped.generation_counter) == GENERATIONS
    assert np.isfinite(float(looped.best_fitness))
    np.testing.assert_allclose(float(scanned.best_fitness), float(looped.best_fitness), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scanned.best_solution), np.asarray(looped.best_solution), rtol=1e-4, atol=1e-5)


def test_cosyne_improves_a_simple_function():
    dims = 10
    strategy = CoSyNE(population_size=32, solution=jnp.zeros(dims))
    params = strategy.default_params
    key = jax.random.key(0)
    population = jax.random.normal(key, (32, dims))
    state = strategy.init(key, population, shifted_sphere(population), params)
    initial_best = float(state.best_fitness)
    for key in jax.random.split(jax.random.key(1), 60):
        state = generation(strategy, params, state, key)
    # The initial best is ~dims/4 * 2 for N(0,1) draws; 60 generations get within a few percent of 0.
    assert float(state.best_fitness) < 0.1 * initial_best
    assert float(state.best_fitness) < 0.2


@pytest.mark.parametrize(
    "mode, popsize, archive, parents, children, asked, elites",
    [
        # evotorch at popsize 16: 4 parents, cross-over rate 2.0 -> 8 children, int(16 * 0.01) = 0 elites.
        ("reference", 16, 16, 4, 8, 24, 0),
        ("reference", 100, 100, 25, 50, 150, 1),
        ("reference", 6, 6, 1, 2, 8, 0),
        # Equal budget: archive round(2/3 popsize), children fill the popsize.
        ("equal_budget", 16, 11, 2, 5, 16, 0),
        ("equal_budget", 24, 16, 4, 8, 24, 0),
        # Where the plausible alternatives differ: round(16 / 3) = 5 (ceil: 6), int(60 * 0.01) = 0 elites (round: 1),
        # and max(1, archive // 4) at an archive of 3.
        ("equal_budget", 8, 5, 1, 3, 8, 0),
        ("reference", 60, 60, 15, 30, 90, 0),
        ("equal_budget", 4, 3, 1, 1, 4, 0),
    ],
)
def test_cosyne_sizes_follow_evotorch(mode, popsize, archive, parents, children, asked, elites):
    strategy = CoSyNE(population_size=popsize, solution=jnp.zeros(4), mode=mode)
    assert (strategy.archive_size, strategy.num_parents, strategy.num_children) == (archive, parents, children)
    assert (strategy.population_size, strategy.num_cosyne_elites) == (asked, elites)
    population = jax.random.normal(jax.random.key(0), (archive, 4))
    state = strategy.init(jax.random.key(0), population, shifted_sphere(population), strategy.default_params)
    asked_population, _ = strategy.ask(jax.random.key(1), state, strategy.default_params)
    assert asked_population.shape == (asked, 4)


def test_cosyne_defaults_are_the_reference_configuration():
    strategy = CoSyNE(population_size=16, solution=jnp.zeros(4))
    assert (strategy.tournament_size, strategy.permute_all, strategy.crossover, strategy.mode) == (2, True, "one_point", "equal_budget")
    assert float(strategy.default_params.mutation_stdev) == pytest.approx(0.1)
    assert float(strategy.default_params.mutation_probability) == 1.0


def _archive(strategy, values, fitness):
    return strategy.init(jax.random.key(0), jnp.asarray(values, jnp.float32), jnp.asarray(fitness, jnp.float32), strategy.default_params)


@pytest.mark.parametrize("fitter_wins", [True])
def test_cosyne_tournament_winner_is_the_fitter_entrant(fitter_wins):
    # Huge tournaments among 4 parents: every tournament contains the best parent (P(miss) = 0.75^64),
    # so every child is the best parent crossed with itself, i.e. the best parent.
    strategy = CoSyNE(population_size=16, solution=jnp.zeros(5), mode="reference", tournament_size=64)
    values = np.arange(16 * 5, dtype=np.float32).reshape(16, 5)
    fitness = np.arange(16, dtype=np.float32)[::-1].copy()  # member 15 is the best
    params = strategy.default_params.replace(mutation_stdev=jnp.float32(0.0))
    children = strategy.breed(jax.random.key(2), jnp.asarray(values), jnp.asarray(fitness), params)
    np.testing.assert_array_equal(np.asarray(children), np.broadcast_to(values[15], children.shape))


def test_cosyne_parents_are_the_best_quarter():
    strategy = CoSyNE(population_size=16, solution=jnp.zeros(3), mode="reference", tournament_size=1)
    values = np.arange(48, dtype=np.float32).reshape(16, 3)
    fitness = np.arange(16, dtype=np.float32)  # members 0..3 are the best quarter
    params = strategy.default_params.replace(mutation_stdev=jnp.float32(0.0))
    seen, mixed = set(), 0
    for seed in range(20):
        children = np.asarray(strategy.breed(jax.random.key(seed), jnp.asarray(values), jnp.asarray(fitness), params))
        for child in children:
            for j, gene in enumerate(child):
                member = int(gene) // 3
                assert int(gene) % 3 == j and member < 4, (child, "genes come from the best quarter, at their own coordinate")
                seen.add(member)
            sources = [int(gene) // 3 for gene in child]
            # One-point crossover: a prefix from one parent and the rest from one other.
            assert sum(a != b for a, b in zip(sources, sources[1:])) <= 1, child
            mixed += len(set(sources)) > 1
    assert seen == {0, 1, 2, 3}  # tournaments of one: every parent is drawn
    assert mixed > 0  # children are crossed over, not copies of parents


def test_one_point_crossover_gives_two_mirrored_one_point_children():
    first = jnp.asarray(np.arange(1, 7, dtype=np.float32)[None].repeat(40, 0))
    second = -first
    children = np.asarray(strategies.one_point_crossover(jax.random.key(0), first, second, None))
    assert children.shape == (80, 6)
    cuts = set()
    for a, b in zip(children[:40], children[40:]):
        cut = int(np.argmax(a > 0))  # genes before the cut come from `second`, from the cut on from `first`
        assert 1 <= cut <= 5
        np.testing.assert_array_equal(a, np.concatenate([-np.arange(1, cut + 1), np.arange(cut + 1, 7)]))
        np.testing.assert_array_equal(b, -a)
        cuts.add(cut)
    assert cuts == {1, 2, 3, 4, 5}


def test_sbx_matches_its_formula_and_keeps_the_parents_mean():
    key = jax.random.key(3)
    first, second = jnp.zeros((4, 3)), jnp.ones((4, 3))
    params = CoSyNE(population_size=8, solution=jnp.zeros(3), eta=2.0).default_params
    children = np.asarray(strategies.simulated_binary_crossover(key, first, second, params))
    u = np.asarray(jax.random.uniform(key, (4, 3)))
    beta = np.where(u > 0.5, (1 / (2 * (1 - u))) ** (1 / 3), (2 * u) ** (1 / 3))
    np.testing.assert_allclose(children[:4], 0.5 * (1 - beta), rtol=1e-5)  # 0.5((1+b) 0 + (1-b) 1)
    np.testing.assert_allclose(children[:4] + children[4:], 1.0, rtol=1e-6)


def test_mutation_probability_and_stdev():
    strategy = CoSyNE(population_size=400, solution=jnp.zeros(50), mode="reference", tournament_size=1)
    values = np.zeros((400, 50), np.float32)
    params = strategy.default_params.replace(mutation_stdev=jnp.float32(0.5), mutation_probability=jnp.float32(0.3))
    children = np.asarray(strategy.breed(jax.random.key(1), jnp.asarray(values), jnp.arange(400.0), params))
    changed = children != 0
    assert abs(changed.mean() - 0.3) < 0.02
    assert abs(children[changed].std() - 0.5) < 0.02


@pytest.mark.parametrize("permute_all", [True, False])
def test_cosyne_permutation_shuffles_within_coordinates(permute_all):
    strategy = CoSyNE(population_size=12, solution=jnp.zeros(5), permute_all=permute_all, mode="reference")
    population = jax.random.normal(jax.random.key(0), (12, 5))
    fitness = shifted_sphere(population)
    permuted = strategy.permute(jax.random.key(3), population, fitness)
    # Each coordinate keeps its multiset of values: CoSyNE recombines, it does not invent values.
    np.testing.assert_allclose(np.sort(np.asarray(permuted), axis=0), np.sort(np.asarray(population), axis=0))
    changed = np.asarray(permuted != population)
    assert changed.any()
    if not permute_all:
        # The best member has permutation probability 0 and keeps all its coordinates.
        assert not changed[int(jnp.argmin(fitness))].any()


def test_permutation_marks_worse_members_more_often():
    fitness = jnp.asarray([3.0, 0.0, 4.0, 1.0, 2.0])  # minimised: member 1 best, member 2 worst
    # Centred ranks + 0.5 are 1/4, 1, 0, 3/4, 2/4 (evenly spaced from the worst); dims = 2.
    expected = 1 - np.array([0.25, 1.0, 0.0, 0.75, 0.5]) ** 0.5
    np.testing.assert_allclose(np.asarray(strategies.mark_probability(fitness, 2)), expected, rtol=1e-6)
    # And the marks are drawn with those probabilities: over many keys, worse members change more often.
    strategy = CoSyNE(population_size=5, solution=jnp.zeros(2), permute_all=False, mode="reference")
    population = jnp.asarray(np.arange(10, dtype=np.float32).reshape(5, 2))
    changed = np.mean([np.asarray(strategy.permute(jax.random.key(seed), population, fitness) != population).any(axis=1) for seed in range(300)], axis=0)
    by_rank = changed[np.argsort(np.asarray(fitness))]  # best first
    assert by_rank[0] == 0.0
    assert np.all(np.diff(by_rank) > 0), by_rank


def test_cosyne_tell_keeps_the_best_of_candidates_and_elites():
    strategy = CoSyNE(population_size=8, solution=jnp.zeros(1), mode="reference", num_elites=1)
    state = _archive(strategy, np.arange(8.0)[:, None], np.arange(8.0))  # member 0 (fitness 0) is the elite
    candidates = np.arange(10.0, 20.0)[:, None]
    candidate_fitness = np.array([5.5, 0.5, 9.0, 1.5, 8.0, 2.5, 7.0, 3.5, 6.0, 4.5], np.float32)
    state, _ = strategy.tell(jax.random.key(1), jnp.asarray(candidates, jnp.float32), jnp.asarray(candidate_fitness), state, strategy.default_params)
    np.testing.assert_array_equal(np.asarray(state.fitness), [0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.0])
    np.testing.assert_array_equal(np.asarray(state.population[:, 0]), [0.0, 11.0, 13.0, 15.0, 17.0, 19.0, 10.0, 18.0])


def test_cosyne_without_elites_can_lose_the_best():
    strategy = CoSyNE(population_size=4, solution=jnp.zeros(2), mode="reference", elitism_ratio=0.0)
    state = _archive(strategy, np.zeros((4, 2)), np.zeros(4))
    worse = jnp.full((6, 2), 10.0)
    state, _ = strategy.tell(jax.random.key(1), worse, jnp.full((6,), 5.0), state, strategy.default_params)
    assert np.all(np.asarray(state.fitness) == 5.0)


def test_cosyne_init_keeps_the_best_of_a_larger_population():
    strategy = CoSyNE(population_size=16, solution=jnp.zeros(1))  # archive 11
    fitness = np.random.default_rng(0).permutation(16).astype(np.float32)
    state = _archive(strategy, fitness[:, None], fitness)
    np.testing.assert_array_equal(np.sort(np.asarray(state.fitness)), np.arange(11.0))


def test_cosyne_nan_fitness_ranks_last():
    strategy = CoSyNE(population_size=4, solution=jnp.zeros(2), mode="reference", num_elites=1)
    population = jnp.arange(8.0).reshape(4, 2)
    fitness = jnp.array([jnp.nan, 3.0, 1.0, 2.0])
    state = strategy.init(jax.random.key(0), population, fitness, strategy.default_params)
    assert float(state.best_fitness) == 1.0
    candidates = jnp.arange(12.0).reshape(6, 2)
    state, _ = strategy.tell(jax.random.key(1), candidates, jnp.array([jnp.nan, 3.0, 1.0, 2.0, jnp.nan, 0.5]), state, strategy.default_params)
    assert np.isfinite(np.asarray(state.fitness)).all()
    np.testing.assert_allclose(np.asarray(state.population[0]), [10.0, 11.0])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "fast"}, "mode must be one of equal_budget, reference"),
        ({"num_children": 20}, r"num_children must be in \[0, 14\]"),
        ({"num_elites": 99}, r"num_elites must be in \[0, 11\]"),
        ({"mode": "reference", "num_children": 3}, "num_children must be even"),
        ({"mutation_probability": 2.0}, r"mutation_probability must be in \[0, 1\]"),
        ({"tournament_size": 0}, "tournament_size must be >= 1"),
    ],
)
def test_cosyne_bad_options_are_clear_errors(options, message):
    with pytest.raises(JaxalignError, match=message):
        make_strategy("CoSyNE", 16, jnp.zeros(4), options)


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(JaxalignError, match="unknown strategy 'Nope'.*CoSyNE.*SNES"):
        make_strategy("Nope", 4, jnp.zeros(2))


def test_strategy_params_overrides_and_unknown_fields():
    strategy = make_strategy("SNES", 4, jnp.zeros(2))
    assert float(make_params(strategy, {}, "SNES").std_init) == pytest.approx(0.2)  # the reference's SNES stdev
    params = make_params(strategy, {"std_init": 0.25}, "SNES")
    assert float(params.std_init) == 0.25
    with pytest.raises(JaxalignError, match="unknown strategy_params bogus for SNES; valid: .*std_init"):
        split_options("SNES", {"bogus": 1.0})
    with pytest.raises(JaxalignError, match="strategy_params.std_init for SNES must be a finite number, got 'abc'"):
        make_params(strategy, {"std_init": "abc"}, "SNES")


def test_cosyne_options_split_between_constructor_and_traced_params():
    constructor, fields = split_options("CoSyNE", {"mode": "reference", "mutation_stdev": 0.3, "tournament_size": 3})
    assert constructor == {"mode": "reference", "mutation_stdev": 0.3, "tournament_size": 3}
    assert fields == {"mutation_stdev": 0.3}
    strategy = make_strategy("CoSyNE", 16, jnp.zeros(4), constructor)
    assert strategy.tournament_size == 3 and float(make_params(strategy, fields, "CoSyNE").mutation_stdev) == pytest.approx(0.3)


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFAULTS))
def test_reference_defaults_apply_unless_overridden(name):
    strategy = make_strategy(name, 16, jnp.zeros(8))
    params = make_params(strategy, {}, name)
    for field, value in REFERENCE_DEFAULTS[name].params.items():
        assert float(getattr(params, field)) == pytest.approx(value)
        assert float(getattr(make_params(strategy, {field: 0.5}, name), field)) == 0.5


def test_odd_popsize_for_pgpe_is_a_clear_error():
    with pytest.raises(JaxalignError, match="PGPE"):
        make_strategy("PGPE", 5, jnp.zeros(2))
