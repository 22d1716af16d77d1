"""The exact toy denoiser in its two forms (variance-preserving noise prediction, rectified-flow velocity): its
outputs agree with each other, and the flow's deterministic and stochastic samplers draw the data distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.sampler import make_sampler
from jaxalign.toy import two_modes


def test_both_forms_predict_the_same_clean_estimate():
    """At noise levels (a, b) where both processes put x, the VP form's eps and the flow form's velocity give one
    E[x0 | x]: x0 = (x - b eps) / a = x - b v."""
    vp, flow = two_modes(), two_modes().as_flow()
    x = jax.random.normal(jax.random.key(0), (64, 2, 1, 1)) * 1.5
    for t_vp in (100, 500, 900):
        a, b = vp.process.signal_and_noise(t_vp)
        sigma = b / (a + b)  # the flow time whose x = (1 - sigma) x0 + sigma eps is x / (a + b) of the VP's
        eps = vp.predict({}, x, t_vp, None)
        velocity = flow.predict({}, x / (a + b), sigma * 1000.0, None)
        np.testing.assert_allclose(np.asarray((x - b * eps) / a), np.asarray(x / (a + b) - sigma * velocity), atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_flow_samplers_draw_the_mixture(eta):
    """100 Euler steps (eta = 0) or DDIM(1) steps on the flow from N(0, I): two modes at x_1 = -2, +2 with equal
    mass, variance 0.25 (the stochastic chain's discretisation leaves 0.24; it measured 0.21 at 20 steps)."""
    model = two_modes().as_flow()
    sampler = make_sampler(model, "auto", 100)
    problem = model.problem()
    denoiser = sampler.bind({}, problem.context, problem.uncond_context, 1.0)

    @jax.jit
    def chain(key, x):
        def body(x, i):
            return denoiser.step(jax.random.fold_in(key, i), x, denoiser.output(x, i), i, eta), None

        return jax.lax.scan(body, x, jnp.arange(100))[0]

    samples = np.asarray(chain(jax.random.key(1), jax.random.normal(jax.random.key(0), (100_000, 2, 1, 1)))).reshape(-1, 2)
    right = samples[:, 0] > 0
    assert abs(right.mean() - 0.5) < 0.01
    np.testing.assert_allclose(samples[right].mean(0), [2.0, 0.0], atol=0.02)
    np.testing.assert_allclose(samples[~right].mean(0), [-2.0, 0.0], atol=0.02)
    for mode in (samples[right], samples[~right]):
        np.testing.assert_allclose(mode.var(0), [0.25, 0.25], atol=0.02)
    if eta == 0.0:  # the deterministic sampler is the flow Euler scheduler itself
        deterministic = np.asarray(jax.jit(sampler.denoise)({}, jax.random.normal(jax.random.key(0), (100_000, 2, 1, 1)), problem.context, problem.uncond_context, 1.0))
        np.testing.assert_array_equal(deterministic.reshape(-1, 2), samples)


def test_tilted_mixture_matches_hand_computed_weights_and_means():
    """p(x) exp(b.x / alpha) for Gaussian components: weight w_k exp(mu_k.b / alpha + v_k |b|^2 / (2 alpha^2)), mean
    mu_k + v_k b / alpha. Equal variances (two_modes) hide the variance term, so unequal ones check it too."""
    from jaxalign.toy import GaussianMixture

    even = two_modes().tilted([1.0, 0.0], 4.0)  # weights 1 / (1 + e^-1), means -2 + 1/16 and 2 + 1/16
    np.testing.assert_allclose(even.weights, [0.2689414213699951, 0.7310585786300049], rtol=1e-12)
    assert even.mean()[0] == pytest.approx(0.9867343145200196, rel=1e-12)
    uneven = GaussianMixture(means=((-2.0, 0.0), (2.0, 0.0)), variances=(0.25, 1.0), weights=(0.5, 0.5)).tilted([1.0, 0.0], 4.0)
    # log-weight difference 1 + 1/32 - 1/128; means -2 + 0.25/4 and 2 + 1/4
    np.testing.assert_allclose(uneven.weights[1], 0.7356416417389247, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(uneven.means)[:, 0], [-1.9375, 2.25], rtol=1e-12)
    assert uneven.mean()[0] == pytest.approx(1.142999374781747, rel=1e-12)
