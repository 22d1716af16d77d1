"""DNO's pieces against hand-computed values and true gradients on toy problems."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.methods import Context, build_method
from jaxalign.methods.dno import image_space_gradient, probability_regularizer
from jaxalign.sampler import make_sampler
from jaxalign.toy import linear_reward, two_modes


def test_regularizer_is_flat_on_typical_noise_and_matches_a_hand_computed_value():
    typical = jax.random.normal(jax.random.key(0), (4096,))
    value = float(probability_regularizer(jax.random.key(1), typical))
    # Each of the four bounds is at most -log 2; typical noise sits at or just above that floor.
    assert 4 * math.log(2) - 1e-5 <= value < 4 * math.log(2) + 0.5
    # A constant vector of ones: blocks of 4 have mean norm 2 and covariance all-ones (eigenvalues 4, 0, 0, 0), so
    # with n = D / 4 rows: log p_mean = -n 2^2 / (2 * 4) = -n / 2, ||C - I|| = 3, deviation = 1 - 2 / sqrt(n),
    # log p_cov = -n deviation^2 / 2; shuffles change nothing, so the regulariser is -2 (log p_mean + log p_cov).
    n = 1024
    expected = n + n * (1 - 2 / math.sqrt(n)) ** 2
    assert float(probability_regularizer(jax.random.key(2), jnp.ones(4 * n))) == pytest.approx(expected, rel=1e-5)
    # A constant 0.5: mean norm 1 (log p_mean = -n / 8), covariance all-0.25 (eigenvalues 1, 0, 0, 0), so C - I has
    # eigenvalues 0, -1, -1, -1: the spectral norm needs the absolute value (the largest eigenvalue is 0).
    expected = n / 4 + n * (math.sqrt(2) - 1 - 2 / math.sqrt(n)) ** 2
    assert float(probability_regularizer(jax.random.key(2), 0.5 * jnp.ones(4 * n))) == pytest.approx(expected, rel=1e-5)


def _toy(method, popsize, steps=8, **options):
    model = two_modes()
    sampler = make_sampler(model, "ddim", steps, remat=True)
    context = Context(sampler, linear_reward([1.0, 0.5]), model.image_shape, model.latent_shape, popsize)
    return model, sampler, build_method(method, context, options)


def _rendered_reward(model, sampler):
    problem = model.problem()

    def reward(z):
        image = sampler.sample({}, z.reshape(1, *model.latent_shape), problem.context, problem.uncond_context, 1.0)
        return image.reshape(-1) @ jnp.asarray([1.0, 0.5])

    return reward


def test_dno_takes_a_clipped_adamw_step_on_the_true_gradient():
    model, sampler, search = _toy("dno", 4)
    params, problem = search.default_params(guidance_scale=1.0), model.problem()
    state = search.start({}, None, problem, params, search.init(jax.random.key(0), problem, params))[0]
    chains = np.asarray(state.method_state.noises)
    state = search.step({}, None, problem, params, state)[0]
    reward = _rendered_reward(model, sampler)
    for chain, updated in zip(chains, np.asarray(state.method_state.noises)):
        grad = -np.asarray(jax.grad(reward)(jnp.asarray(chain)))
        grad = grad * min(1.0, 1.0 / np.linalg.norm(grad))
        # Adam's first step is g / (|g| + eps); AdamW's decoupled decay adds lr * wd * z.
        expected = chain - 0.01 * (grad / (np.abs(grad) + 1e-8) + 0.01 * chain)
        np.testing.assert_allclose(updated, expected, rtol=1e-4, atol=1e-6)


def test_dno_second_step_is_adamw_with_the_official_moments_and_bias_correction():
    """Adam's first step is sign-like whatever b1, b2 and the bias correction are; the second one tells them apart:
    a NumPy AdamW (b1 0.9, b2 0.999, eps 1e-8, bias-corrected, decay lr * wd * z, gradients clipped to norm 1) on the
    true gradients at both points."""
    model, sampler, search = _toy("dno", 4)
    params, problem = search.default_params(guidance_scale=1.0), model.problem()
    state = search.start({}, None, problem, params, search.init(jax.random.key(0), problem, params))[0]
    chains = [np.asarray(state.method_state.noises, np.float64)]
    for _ in range(2):
        state = search.step({}, None, problem, params, state)[0]
        chains.append(np.asarray(state.method_state.noises, np.float64))
    gradient = jax.grad(_rendered_reward(model, sampler))
    lr, wd, b1, b2, eps = 0.01, 0.01, 0.9, 0.999, 1e-8
    for member in range(len(chains[0])):
        z, m, v = chains[0][member], 0.0, 0.0
        for t in (1, 2):
            g = -np.asarray(gradient(jnp.asarray(z, jnp.float32)), np.float64)
            g = g * min(1.0, 1.0 / np.linalg.norm(g))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            z = z - lr * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * z)
            # The step's size is lr ~ 0.01 per entry: 1e-6 is a thousandth of it.
            np.testing.assert_allclose(chains[t][member], z, rtol=0, atol=2e-6)


def test_hybrid_estimate_points_along_the_true_gradient():
    model, sampler, _ = _toy("dno_hybrid", 4)
    problem = model.problem()
    z = jax.random.normal(jax.random.key(0), (2,))

    def render(z):
        return sampler.sample({}, z.reshape(-1, *model.latent_shape), problem.context, problem.uncond_context, 1.0).reshape(z.shape[0], -1)

    loss = lambda images: -(images @ jnp.asarray([1.0, 0.5]))  # noqa: E731
    members = jnp.concatenate([z[None], z + 0.01 * jax.random.normal(jax.random.key(1), (64, 2))])
    image, pullback = jax.vjp(lambda v: render(v[None])[0], z)
    images = render(members)
    (estimate,) = pullback(image_space_gradient(loss(images), images))
    true = jax.grad(lambda v: loss(render(v[None]))[0])(z)
    cosine = float(estimate @ true / (jnp.linalg.norm(estimate) * jnp.linalg.norm(true)))
    assert cosine > 0.9
    # With the losses shuffled against the images the estimate loses its direction (the check can fail).
    shuffled = image_space_gradient(jax.random.permutation(jax.random.key(2), loss(images)), images)
    assert abs(float(pullback(shuffled)[0] @ true) / (float(jnp.linalg.norm(pullback(shuffled)[0])) * float(jnp.linalg.norm(true)) + 1e-12)) < cosine


@pytest.mark.parametrize("method", ["dno", "dno_hybrid"])
def test_sde_mode_optimises_every_noise(method):
    model, _, search = _toy(method, 4, steps=6, mode="sde")
    params, problem = search.default_params(guidance_scale=1.0, method_overrides={"learning_rate": 0.1}), model.problem()
    state, first = search.start({}, None, problem, params, search.init(jax.random.key(0), problem, params))
    assert state.best_solution.shape == (7 * 2,)
    before = np.asarray(state.method_state.noises).reshape(-1, 7, 2)
    assert np.all(before[..., :-1, :] != 0)  # fresh step noises
    # x_T comes from generation 0: member 0 (dno's first chain, dno_hybrid's only one) is the baseline latent.
    np.testing.assert_array_equal(before[0, -1], np.asarray(problem.centre).reshape(-1))
    rewards = []
    for _ in range(15):
        state, report = search.step({}, None, problem, params, state)
        rewards.append(float(np.nanmean(np.asarray(report.fitness))))
    after = np.asarray(state.method_state.noises).reshape(-1, 7, 2)
    moved = np.abs(after - before).reshape(-1, 7, 2).max(axis=(0, 2))
    assert np.all(moved[1:-1] > 1e-3) and moved[-1] > 1e-3  # the step noises (slice 0 is unused by the last step) and x_T
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3])


def test_a_chain_with_a_non_finite_gradient_skips_its_step_as_the_reference_grad_scaler():
    """benchmark_dno.py (fp16 by default) steps through GradScaler, which skips optimizer.step() when the unscaled
    gradient holds inf or NaN: that chain's noise and AdamW state (its count too) stay; the other chains step."""
    from jaxalign.methods.dno import _ADAMW, _optimizer, _step_if_finite, _with_knobs

    optimizer = _optimizer()
    params = type("P", (), {"method": {k: jnp.float32(v) for k, v in _ADAMW.items()}})()
    noises = jax.random.normal(jax.random.key(0), (3, 8))
    state = _with_knobs(jax.vmap(optimizer.init)(noises), params, (3,))
    grad = jax.random.normal(jax.random.key(1), (3, 8)).at[1, 5].set(jnp.nan).at[2, 0].set(jnp.inf)
    stepped, new_state = jax.vmap(_step_if_finite, in_axes=(None, 0, 0, 0))(optimizer, grad, state, noises)
    updates, expected_state = optimizer.update(grad[0], jax.tree.map(lambda x: x[0], state), noises[0])
    np.testing.assert_allclose(stepped[0], noises[0] + updates, rtol=1e-6)
    assert float(jnp.abs(stepped[0] - noises[0]).max()) > 1e-3
    np.testing.assert_array_equal(stepped[1:], noises[1:])
    counts = jax.tree.leaves(jax.tree.map(lambda x: x, new_state.inner_state))
    count_leaf = [leaf for leaf in counts if leaf.dtype == jnp.int32]
    assert count_leaf and all(np.array_equal(np.asarray(c), [1, 0, 0]) for c in count_leaf)
    for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(new)[1:], np.asarray(old)[1:])


def test_hybrid_image_space_estimate_is_the_normalised_sum_on_a_hand_example():
    """sum_i (l_i - l_0)(img_i - img_0) / (||.|| + 1e-3): a sum over perturbations (not a mean), normalised by the
    norm plus 1e-3 (not its square). l = (1, 3, 0.5), images (0, 0), (1, 2), (-2, 1): g = 2 (1, 2) - 0.5 (-2, 1)."""
    g = np.asarray([3.0, 3.5])
    expected = g / (math.sqrt(21.25) + 1e-3)
    got = image_space_gradient(jnp.asarray([1.0, 3.0, 0.5]), jnp.asarray([[0.0, 0.0], [1.0, 2.0], [-2.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
