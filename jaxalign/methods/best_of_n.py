"""``random``: best-of-N, ``popsize`` fresh N(0, I) initial noises per generation, as the reference's
random search (pjjajal/diffusion-trajectory ``benchmark_baselines.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.methods.base import METHODS, Context, MethodSpec, noise_method
from jaxalign.search import Search


def _random(context: Context, numeric) -> Search:
    def propose(key, method_state, params, problem):
        return jax.random.normal(key, (context.popsize, problem.centre.size))

    def update(key, method_state, noises, scores, extra, params, first):
        return method_state

    return noise_method(context, numeric, propose, update, lambda centre, params: jnp.zeros((), jnp.int32))


METHODS.register("random", MethodSpec(_random))
