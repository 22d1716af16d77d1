"""``zero_order``: zero-order search (Ma et al. 2025, arXiv 2501.09732), as the reference's baseline
(pjjajal/diffusion-trajectory ``benchmark_baselines.py``, neighbours as tt-scale-flux).

The pivot starts at the baseline latent. Each generation draws ``popsize`` neighbours with the
pivot's norm at cosine similarity ``cosine`` (0.95) to it and moves the pivot to the best
neighbour only when it strictly beats the pivot. The reference re-samples the pivot with the
neighbours every step; sampling is deterministic, so the pivot's score is kept instead (one image
per generation fewer, the same decisions).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, Method, MethodSpec, make_search, numeric_defaults
from jaxalign.search import Search


class PivotState(NamedTuple):
    pivot: jax.Array  # [d]
    score: jax.Array  # the pivot's score (higher is better)


def sphere_neighbours(key, pivot, cosine, count: int):
    """``count`` random points with the pivot's norm at cosine similarity ``cosine`` to it."""
    norm = jnp.linalg.norm(pivot)
    direction = pivot / jnp.maximum(norm, 1e-12)
    u = jax.random.normal(key, (count, pivot.size))
    u = u - (u @ direction)[:, None] * direction  # orthogonal to the pivot
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    return norm * (cosine * direction + jnp.sqrt(1.0 - cosine**2) * u)


def _zero_order(context: Context, numeric) -> Search:
    def propose(key, state: PivotState, params, problem):
        return sphere_neighbours(key, state.pivot, params.method["cosine"], context.popsize), state

    def update(key, state: PivotState, noises, scores, extra, params, first):
        if first:  # generation 0: member 0 is the baseline latent, the reference's first pivot
            return PivotState(noises[0], scores[0])
        best = jnp.argmax(scores)
        moves = scores[best] > state.score
        return PivotState(jnp.where(moves, noises[best], state.pivot), jnp.where(moves, scores[best], state.score))

    init = lambda key, centre, params: PivotState(centre, jnp.float32(-jnp.inf))  # noqa: E731
    return make_search(context, Method(init, propose, update, numeric_defaults(numeric)))


def _check(context: Context, static, numeric) -> None:
    if not -1.0 < numeric["cosine"] < 1.0:
        raise JaxalignError(f"method 'zero_order': method_params.cosine must be in (-1, 1), got {numeric['cosine']}")


METHODS.register("zero_order", MethodSpec(_zero_order, numeric={"cosine": 0.95}, check=_check))
