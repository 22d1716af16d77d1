"""Search spaces: how a flat solution vector becomes an initial latent.

Following arXiv 2506.00299 (Sec. 3), the search either runs over the initial noise itself or
over a low-dimensional transform of one fixed "centre" noise. Each space is a pure pair, in the
style of optax's ``(init, update)``:

* ``init(centre) -> solution``: the solution that reproduces the centre latent (the search's
  starting point and the unaligned baseline);
* ``apply(params, solution, centre) -> latent``: one solution to one latent [c, h, w]; the search
  vmaps it over the population. ``params`` holds the space's numeric knobs (traced, sweepable).

Spaces:

* ``noise``: the latent itself (dimension c*h*w).
* ``rotation``: a channel shift (c) and a c x c matrix (c^2) whose QR factor rotates the centre
  latent over channels; the latent is ``Q @ centre + mean_scale * shift``. A rotated standard
  Gaussian stays standard Gaussian, so every candidate is a plausible initial noise.
* ``svd_rotation``: as ``rotation`` but the matrix keeps its singular vectors and has its singular
  values clamped to [1 - bound, 1 + bound], a near-orthogonal map.

The identity solution (zero shift, identity matrix) gives back the centre latent in both
rotation spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.registry import Registry


class SearchSpace(NamedTuple):
    init: Callable[[jax.Array], jax.Array]
    apply: Callable[[dict, jax.Array, jax.Array], jax.Array]
    default_params: dict[str, Any]


SPACES: Registry[Callable[[], SearchSpace]] = Registry("space")


@SPACES.register("noise")
def noise() -> SearchSpace:
    def init(centre):
        return centre.reshape(-1)

    def apply(params, solution, centre):
        return solution.reshape(centre.shape).astype(centre.dtype)

    return SearchSpace(init, apply, {})


def _channel_transform(to_matrix: Callable[[jax.Array, dict], jax.Array], default_params: dict) -> SearchSpace:
    def init(centre):
        c = centre.shape[0]
        return jnp.concatenate([jnp.zeros(c, centre.dtype), jnp.eye(c, dtype=centre.dtype).reshape(-1)])

    def apply(params, solution, centre):
        c = centre.shape[0]
        shift, matrix = solution[:c], solution[c:].reshape(c, c)
        mixed = jnp.einsum("ij,jhw->ihw", to_matrix(matrix, params), centre)
        return (mixed + params["mean_scale"] * shift[:, None, None]).astype(centre.dtype)

    return SearchSpace(init, apply, default_params)


def orthogonal_factor(matrix: jax.Array) -> jax.Array:
    """Q of the QR decomposition with R's diagonal made positive, so Q is unique and Q(I) = I."""
    q, r = jnp.linalg.qr(matrix)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    return q * signs[None, :]


def clamped_singular_values(matrix: jax.Array, bound) -> jax.Array:
    u, s, vh = jnp.linalg.svd(matrix)
    return (u * jnp.clip(s, 1.0 - bound, 1.0 + bound)[None, :]) @ vh


@SPACES.register("rotation")
def rotation(mean_scale: float = 1.0) -> SearchSpace:
    return _channel_transform(lambda m, p: orthogonal_factor(m), {"mean_scale": mean_scale})


@SPACES.register("svd_rotation")
def svd_rotation(mean_scale: float = 1.0, bound: float = 0.05) -> SearchSpace:
    return _channel_transform(lambda m, p: clamped_singular_values(m, p["bound"]), {"mean_scale": mean_scale, "bound": bound})
