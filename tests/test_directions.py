"""Every method moves the objective the way it is told, on a toy problem, against best-of-N at the same budget.

A wrong sign anywhere (the strategy told the opposite direction, a selection reversed, a gradient
ascended instead of descended) turns a method's late generations the other way; best-of-N (``random``)
is the control, whose generations do not move. Two-mode toy mixture, linear reward r(x) = x_1 + x_2 / 2,
fixed seeds; the statistic is the mean raw reward of the last two generations minus generation 0's, times +1
when maximising and -1 when minimising, averaged over seeds.
"""

import jax
import numpy as np
import pytest

from jaxalign.methods import METHODS, Context, build_method
from jaxalign.rewards import oriented
from jaxalign.sampler import make_sampler
from jaxalign.toy import linear_reward, two_modes

SEEDS = (0, 1, 2)
GENERATIONS = 6
# Toy-sized settings: the toy's rewards are O(1), so the gradient methods take larger steps than on images.
OPTIONS = {
    "dno": {"learning_rate": 0.2},
    "dno_hybrid": {"learning_rate": 0.5, "perturbation": 0.1},
    "svdd": {"num_candidates": 4},
    "dsearch": {"num_candidates": 2, "width": 2.0},
    "das": {"alpha": 0.5},
}
POPSIZE = {"dsearch": 10}


def _search(method, maximize):
    model = two_modes()
    popsize = POPSIZE.get(method, 8)
    sampler = make_sampler(model, "ddim", 8, remat=METHODS[method].differentiates_sampler)
    context = Context(sampler, oriented(linear_reward([1.0, 0.5]), maximize), model.image_shape, model.latent_shape, popsize)
    options = OPTIONS.get(method, {})  # static options and numeric defaults alike, as a run config gives them
    search = build_method(method, context, options)
    return model, search, search.default_params(guidance_scale=1.0)


def movement(method, maximize):
    """Mean over seeds of (late generations' mean raw reward - generation 0's), signed so that better is positive."""
    model, search, params = _search(method, maximize)
    sign = 1.0 if maximize else -1.0
    moves = []
    for seed in SEEDS:
        problem = model.problem(seed)
        state = search.init(jax.random.key(seed), problem, params)
        fitness = []
        for _ in range(GENERATIONS + 1):
            state, report = search.advance({}, None, problem, params, state)
            fitness.append(np.nanmean(np.asarray(report.components["linear"])))  # the reward before orientation
        moves.append(sign * (np.mean(fitness[-2:]) - fitness[0]))
    return float(np.mean(moves))


@pytest.fixture(scope="module")
def best_of_n():
    return {maximize: movement("random", maximize) for maximize in (True, False)}


@pytest.mark.parametrize("maximize", [True, False], ids=["maximize", "minimize"])
@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "random"))
def test_late_generations_move_the_objective_the_right_way(method, maximize, best_of_n):
    # Best-of-N's generations are fresh draws: they stay where generation 0 was (within noise).
    assert abs(best_of_n[maximize]) < 0.6
    assert movement(method, maximize) > best_of_n[maximize] + 0.4
