"""Contracts every registry entry keeps, parametrised over the registries: a new reward or scheduler is
tested by registering it. (Methods: test_method_budgets.py, test_directions.py; strategies:
test_strategies.py; spaces: test_spaces.py; resampling schemes: test_das.py; model families:
test_families.py.)"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.rewards import REWARDS, is_learned, parse_reward
from jaxalign.sampler import make_sampler
from jaxalign.schedulers import SCHEDULERS, RectifiedFlow
from jaxalign.toy import GaussianMixture

# Rewards whose constructor takes an argument (``name:argument`` in a config): one example each.
ARGUMENTS = {"color_fraction": "red"}
# Learned rewards read weights; their parity with the PyTorch originals, on tiny weights, is test_learned_rewards.py's.
WEIGHT_FREE = sorted(name for name in REWARDS if not is_learned(name))


def _reward(name):
    takes_argument = any(p.default is p.empty for p in inspect.signature(REWARDS[name]).parameters.values())
    return parse_reward(f"{name}:{ARGUMENTS[name]}" if takes_argument else name)


@pytest.mark.parametrize("name", WEIGHT_FREE)
def test_a_reward_scores_each_image_on_its_own(name):
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
    images = images.at[1].set(jnp.linspace(0.0, 1.0, 16)[:, None, None] * jnp.array([1.0, 0.2, 0.5]))
    reward = _reward(name)
    together = np.asarray(reward.score(images))
    assert together.shape == (3,) and np.isfinite(together).all()
    alone = np.concatenate([np.asarray(reward.score(images[i : i + 1])) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)  # no image's score depends on another's
    assert len(np.unique(together.round(6))) > 1  # and different images can score differently


@pytest.mark.parametrize("name", [n for n in WEIGHT_FREE if _reward(n).differentiable])
def test_a_differentiable_reward_has_finite_gradients(name):
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=0.05, maxval=0.95)
    reward = _reward(name)
    grad = jax.grad(lambda x: reward.score(x).sum())(images)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_every_learned_reward_is_covered_by_the_parity_tests():
    source = open(__file__.replace("test_registries.py", "test_learned_rewards.py")).read()
    learned = sorted(set(REWARDS) - set(WEIGHT_FREE))
    assert learned and all(f'"{name}"' in source for name in learned), learned


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_scheduler_brings_noise_to_the_data_of_an_exact_denoiser(name):
    # Data concentrated at one point m (variance 1e-6): every step's clean estimate is m, so any correct
    # scheduler, deterministic or stochastic, ends at m from any noise.
    m = (1.5, -0.5)
    model = GaussianMixture(means=(m,), variances=(1e-6,), weights=(1.0,))
    model = model.as_flow() if SCHEDULERS[name].process is RectifiedFlow else model
    sampler = make_sampler(model, name, 8)
    problem = model.problem()
    noise = jax.random.normal(jax.random.key(2), (64, *model.latent_shape))
    final = sampler.denoise({}, noise, problem.context, problem.uncond_context, 1.0)
    np.testing.assert_allclose(np.asarray(final).reshape(64, -1), np.broadcast_to(m, (64, 2)), atol=2e-2)
