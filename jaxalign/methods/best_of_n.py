"""``random``: best-of-N, ``popsize`` fresh N(0, I) initial noises per generation, as the reference's
random search (pjjajal/diffusion-trajectory ``benchmark_baselines.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.methods.base import METHODS, Context, Method, MethodSpec, make_search, numeric_defaults
from jaxalign.search import Search


def _random(context: Context, numeric) -> Search:
    def propose(key, state, params, problem):
        return jax.random.normal(key, (context.popsize, problem.centre.size)), state

    return make_search(context, Method(lambda key, centre, params: jnp.zeros((), jnp.int32), propose, defaults=numeric_defaults(numeric)))


METHODS.register("random", MethodSpec(_random))
