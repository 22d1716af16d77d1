"""DSearch and SVDD on toy problems with known answers, and their operators against hand-computed values."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.methods import Context, build_method
from jaxalign.methods.dsearch import beam_search, drop_sizes, expected_cost, prune, replace_worst, search_probabilities, select_children
from jaxalign.sampler import Denoiser, make_sampler
from jaxalign.toy import linear_reward, two_modes

# The official beam sizes for bs=12, E=5 (N0=60), T=50, computed from divelab/DSearch sd_pipeline.py's formulas.
OFFICIAL_EXPONENTIAL = [60, 58, 56, 54, 52, 50, 49, 47, 46, 44, 43, 41, 40, 39, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27,
                        26, 25, 24, 23, 23, 22, 21, 20, 20, 19, 19, 18, 17, 17, 16, 16, 15, 15, 14, 14, 13, 13, 12, 12]  # fmt: skip
OFFICIAL_SIGMOID_HEAD = [59, 59, 59, 59, 58, 58, 58, 58, 57, 57, 56, 55, 54, 53, 52, 51, 49, 47, 45, 42, 40, 37, 34, 31, 28, 25, 22, 19, 17, 14, 12]


def test_schedules_match_the_official_tables():
    np.testing.assert_array_equal(drop_sizes("exponential", 50, 60, 12), OFFICIAL_EXPONENTIAL)
    sigmoid = drop_sizes("sigmoid", 50, 60, 12)
    np.testing.assert_array_equal(sigmoid[: len(OFFICIAL_SIGMOID_HEAD)], OFFICIAL_SIGMOID_HEAD)
    assert np.all(sigmoid[len(OFFICIAL_SIGMOID_HEAD) :] == 12)
    linear = drop_sizes("linear", 50, 60, 12)
    assert linear[0] == 60 and linear[-1] == 12 and np.all(np.diff(linear) == -1)
    quadratic = drop_sizes("quadratic", 50, 60, 12)
    assert quadratic[:8].tolist() == [60, 58, 56, 54, 52, 50, 48, 47] and quadratic[-1] == 12
    p = search_probabilities("exponential", 50)
    assert p.shape == (49,) and p[0] == 0
    np.testing.assert_allclose(p[[1, 10, 48]], [1 - np.exp(-3 / 49), 1 - np.exp(-30 / 49), 1 - np.exp(-144 / 49)], rtol=1e-6)
    np.testing.assert_allclose(search_probabilities("linear", 50)[:2], [10 / 49, 11 / 49], rtol=1e-6)


def _scalar_denoiser():
    """A denoiser whose transition puts child k of particle p at a known point, so the selection is checkable."""

    def transition(x, out, i, eta):
        return x, jnp.float32(1.0)

    return Denoiser(
        output=lambda x, i: jnp.zeros_like(x),
        transition=transition,
        predicted_clean=lambda x, out, i: x,
        decode=lambda z: z,
        num_steps=2,
    )


def test_select_children_keeps_each_parents_best_child():
    n, count, alive = 4, 5, 3
    denoiser = _scalar_denoiser()
    x = jnp.asarray([0.0, 10.0, 20.0, 30.0])[:, None]
    key = jax.random.key(3)
    best, _, values, chunks = select_children(key, denoiser, lambda c: -((c[:, 0] % 10) - 0.3) ** 2, x, x, alive, 0, 1.0, count)
    assert int(chunks) == -(-alive * count // n)
    # Recompute the children with the same keys: chunk c uses the c-th split of the key, child j -> parent j % alive.
    children = np.full((alive, count), np.nan)
    k = key
    for c in range(int(chunks)):
        k, noise_key = jax.random.split(k)
        noise = np.asarray(jax.random.normal(noise_key, (n, 1)))[:, 0]
        for slot in range(n):
            j = c * n + slot
            if j < alive * count:
                children[j % alive, j // alive] = float(x[j % alive, 0]) + noise[slot]
    scores = -((children % 10) - 0.3) ** 2
    expected = children[np.arange(alive), np.argmax(scores, axis=1)]
    np.testing.assert_allclose(np.asarray(best)[:alive, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(values)[:alive], scores.max(axis=1), rtol=1e-5)
    assert np.isneginf(np.asarray(values)[alive:]).all()


def test_prune_keeps_the_best_children_when_the_beam_drops():
    x = jnp.arange(6.0)[:, None]
    values = jnp.asarray([1.0, 5.0, 3.0, 4.0, -jnp.inf, -jnp.inf])  # slots 4 and 5 are dead
    kept, _, kept_values, alive = prune(x, x, values, 4, 2)
    assert int(alive) == 2 and np.asarray(kept)[:2, 0].tolist() == [1.0, 3.0] and np.asarray(kept_values)[:2].tolist() == [5.0, 4.0]
    same, _, _, alive = prune(x, x, values, 4, 4)  # no drop: order and width unchanged
    assert int(alive) == 4 and np.asarray(same)[:, 0].tolist() == list(range(6))


def test_replace_worst_drops_the_lowest_and_appends_softmax_draws():
    x = jnp.arange(6.0)[:, None]
    values = jnp.asarray([0.0, -50.0, 3.0, -40.0, 2.0, 1.0])
    new_x, _, new_values = replace_worst(jax.random.key(0), x, x, values, 2)
    kept = np.asarray(new_x)[:4, 0].tolist()
    assert kept == [0.0, 2.0, 4.0, 5.0]  # the two worst (1 and 3) are gone, survivors keep their order
    draws = jax.vmap(lambda k: replace_worst(k, x, x, values, 2)[0][4:, 0])(jax.random.split(jax.random.key(1), 4000))
    counts = np.bincount(np.asarray(draws).astype(int).ravel(), minlength=6) / draws.size
    softmax = np.exp([0.0, 3.0, 2.0, 1.0]) / np.exp([0.0, 3.0, 2.0, 1.0]).sum()
    np.testing.assert_allclose(counts[[0, 2, 4, 5]], softmax, atol=0.02)
    assert counts[1] == counts[3] == 0


def _toy_search(name, popsize, options, steps=20, process="vp"):
    model = two_modes().as_flow() if process == "flow" else two_modes()
    context = Context(make_sampler(model, "auto", steps), linear_reward([1.0, 0.0]), model.image_shape, model.latent_shape, popsize)
    return model, build_method(name, context, options)


@pytest.mark.parametrize(
    "name,popsize,options,process",
    [
        ("svdd", 8, {"num_candidates": 4}, "vp"), ("dsearch", 20, {}, "vp"),
        ("dsearch", 8, {"oversampling": 1, "drop_schedule": "none", "replace_rate": 0.25}, "vp"),
        ("svdd", 8, {"num_candidates": 4}, "flow"), ("dsearch", 20, {}, "flow"),  # through the flow's DDIM(eta) transition
    ],
)  # fmt: skip
def test_beam_methods_raise_the_reward_and_count_their_budget(name, popsize, options, process):
    model, search = _toy_search(name, popsize, options, process=process)
    params, problem = search.default_params(), model.problem()
    state = search.init(jax.random.key(0), problem, params)
    state, plain = search.start({}, None, problem, params, state)
    assert int(plain.spent["nfe"]) == popsize * 20 and int(plain.spent["images"]) == popsize
    guided, spent = [], [jax.device_get(plain.spent)]
    for _ in range(3):
        state, report = search.step({}, None, problem, params, state)
        guided.append(np.asarray(report.fitness))
        spent.append(jax.device_get(report.spent))
    guided = np.concatenate(guided)
    # Plain sampling of the two modes has mean reward 0 with spread ~2; selection by reward moves it well above.
    assert guided.mean() > 2.0 and np.asarray(plain.fitness).mean() < 1.0
    final_beam = popsize // options.get("oversampling", 1 if name == "svdd" else 5)
    assert guided.size == 3 * final_beam
    for before, after in zip(spent[1:], spent[2:]):
        nfe, images = after["nfe"] - before["nfe"], after["images"] - before["images"]
        # Step 0's model call for every particle, then whole chunks of `popsize` children, then the final decodes.
        assert (nfe - popsize) % popsize == 0 and images == nfe - popsize + final_beam
        if name == "svdd":
            assert nfe == popsize + popsize * 4 * 19


def test_dsearch_bad_options_are_one_line_errors():
    with pytest.raises(JaxalignError, match="must be at least method_params.oversampling=5"):
        _toy_search("dsearch", 4, {})
    with pytest.raises(JaxalignError, match="replace_rate \\* beam must be at least 1"):
        _toy_search("dsearch", 8, {"oversampling": 1, "drop_schedule": "none", "replace_rate": 0.05})
    with pytest.raises(JaxalignError, match="replace_rate \\* beam must be at least 1"):  # int(0.8) = 0; round would give 1
        _toy_search("dsearch", 8, {"oversampling": 1, "drop_schedule": "none", "replace_rate": 0.1})
    with pytest.raises(JaxalignError, match="unknown drop_schedule 'cubic'; valid: exponential, quadratic, linear, sigmoid, none"):
        _toy_search("dsearch", 10, {"drop_schedule": "cubic"})
    with pytest.raises(JaxalignError, match="unknown search_schedule"):
        _toy_search("dsearch", 10, {"search_schedule": "sometimes"})
    with pytest.raises(JaxalignError, match="needs oversampling=1"):
        _toy_search("dsearch", 10, {"replace_rate": 0.5})




def test_search_steps_widen_children_to_the_official_count():
    """On search steps each of `alive` particles draws int(w M N0 / alive) children (sd_pipeline.py's w_ad):
    with every step a search step, the counted NFE is N0 plus whole chunks of N0 covering alive * D children."""
    from jaxalign.methods.dsearch import beam_search

    model = two_modes()
    sampler = make_sampler(model, "ddim", 6)
    problem = model.problem()
    denoiser = sampler.bind({}, problem.context, problem.uncond_context, 1.0)
    n0, beam, m, w = 12, 3, 2, 1.5
    beam_after = drop_sizes("linear", 6, n0, beam)  # int(12 - 9 t / 5): 12, 10, 8, 6, 4 after steps 0..4
    final, spent = beam_search(
        jax.random.key(0), denoiser, lambda clean: clean.reshape(clean.shape[0], -1)[:, 0], popsize=n0,
        latent_shape=model.latent_shape, final_beam=beam, num_candidates=m,
        search_probability=np.ones(5, np.float32), beam_after=beam_after, width=w, replace_rate=0.0, eta=1.0,
    )  # fmt: skip
    alive, chunks = n0, 0
    for drop_to in beam_after:
        children = int(w * m * (n0 / alive)) if n0 > alive else int(w * m)  # 3, 3, 3, 4, 6 for alive 12, 12, 10, 8, 6
        chunks += -(-alive * children // n0)
        alive = min(alive, int(drop_to))
    assert beam_after.tolist() == [12, 10, 8, 6, 4]
    # The official code returns what the schedule leaves (4 here, more than bs = 3).
    assert int(spent["nfe"]) == n0 + n0 * chunks and int(spent["images"]) == n0 * chunks + 4
    assert final.shape == (4, *model.latent_shape)


def test_widened_child_count_is_the_official_integer_part_without_float32_shortfall():
    """int(w * M * N0 / beam) for every size up to N0 = 64 and the official widths: exact (the float32 product with
    N0 / beam taken first is one short at w 3, M 5, N0 21, beam 5, and elsewhere)."""
    from fractions import Fraction

    from jaxalign.methods.dsearch import widened_count

    for width in (1.0, 2.0, 3.0, 5.0, 2.5):
        for num_candidates in (1, 3, 5, 7):
            popsize = np.arange(2, 65)[:, None]
            alive = np.arange(1, 65)[None, :]
            got = np.asarray(jax.jit(widened_count, static_argnums=(1,))(width, num_candidates, popsize, alive))
            for n0, beam in zip(*np.nonzero(np.arange(2, 65)[:, None] > np.arange(1, 65)[None, :])):
                exact = Fraction(width) * num_candidates * int(popsize[n0, 0]) / int(alive[0, beam])
                assert got[n0, beam] == int(exact), (width, num_candidates, popsize[n0, 0], alive[0, beam])
            assert np.all(got[np.arange(2, 65)[:, None] <= np.arange(1, 65)[None, :]] == int(width * num_candidates))
    assert int(widened_count(3.0, 5, 21, 5)) == 63 and int(np.floor(np.float32(3.0) * 5 * (np.float32(21) / np.float32(5)))) == 62


def _still_denoiser(num_steps):
    """Children equal their parents (std 0), so a run's beam shows only what selection, pruning and replacement did."""
    return Denoiser(
        output=lambda x, i: jnp.zeros_like(x),
        transition=lambda x, out, i, eta: (x, jnp.float32(0.0)),
        predicted_clean=lambda x, out, i: x,
        decode=lambda z: z,
        num_steps=num_steps,
    )


@pytest.mark.parametrize("width,num_candidates", [(1.5, 3), (1.0, 2), (2.0, 1)])
def test_expected_cost_is_a_deterministic_runs_spend(width, num_candidates):
    # With every search coin fixed at 0 or 1 the expectation has nothing to average: it must be the run's own count.
    # Sizes where alive * count is not a multiple of N0, so a floor or a round of the chunk count would differ.
    popsize, final_beam, steps = 7, 2, 6
    beam_after = drop_sizes("exponential", steps, popsize, final_beam)
    for probability in ([0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 1, 0]):
        probability = np.asarray(probability, np.float32)
        _, spent = beam_search(
            jax.random.key(1), _still_denoiser(steps), lambda clean: clean[:, 0], popsize=popsize, latent_shape=(1,),
            final_beam=final_beam, num_candidates=num_candidates, search_probability=probability, beam_after=beam_after,
            width=width, replace_rate=0.0, eta=1.0,
        )  # fmt: skip
        expected = expected_cost(popsize, final_beam, num_candidates, probability, beam_after, width)
        assert {k: int(v) for k, v in spent.items()} == expected, probability


@pytest.mark.parametrize("replace_rate,replaced", [(0.45, 3), (0.3, 2), (0.74, 5)])
def test_beam_search_replaces_the_floor_of_rate_times_beam(replace_rate, replaced):
    # 8 x 0.45 = 3.6 (floor 3, round 4), 8 x 0.3 = 2.4, 8 x 0.74 = 5.92 (floor 5, round 6): the official int().
    popsize = 8
    start = np.asarray(jax.random.normal(jax.random.split(jax.random.key(4), 3)[1], (popsize, 1)))[:, 0]
    final, _ = beam_search(
        jax.random.key(4), _still_denoiser(2), lambda clean: clean[:, 0], popsize=popsize, latent_shape=(1,),
        final_beam=popsize, num_candidates=1, search_probability=np.zeros(1, np.float32),
        beam_after=np.full(1, popsize, np.int32), width=1.0, replace_rate=replace_rate, eta=1.0,
    )  # fmt: skip
    final = np.asarray(final)[:, 0]
    survivors = start[np.sort(np.argsort(start)[replaced:])]  # the lowest `replaced` gone, the order kept
    np.testing.assert_array_equal(final[: popsize - replaced], survivors)
    assert np.isin(final[popsize - replaced :], survivors).all()
