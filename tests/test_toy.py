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
