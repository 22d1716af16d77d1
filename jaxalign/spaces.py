"""Search spaces: how a flat solution vector becomes an initial latent.

Following arXiv 2506.00299 (Sec. 3), the search either runs over the initial noise itself or
over a low-dimensional transform of one fixed "centre" noise. Each space is a pure pair, in the
style of optax's ``(init, update)``:

* ``init(centre) -> solution``: the solution that reproduces the centre latent (the search's
  starting point and the unaligned baseline); it also validates the latent's shape and is called
  at build time, so bad shapes fail before any model work;
* ``apply(params, solution, centre) -> latent``: one solution to one latent [c, h, w]; the search
  vmaps it over the population. ``params`` holds the space's numeric knobs (traced, sweepable).

Spaces (names as in the reference code, pjjajal/diffusion-trajectory ``noise_injection.py``):

* ``noise``: the latent itself (dimension c*h*w); the reference's ``noise`` with add_noise=False.
* ``additive_noise``: the latent is ``centre + solution`` (dimension c*h*w, identity solution
  zeros); the reference's ``noise`` with add_noise=True.
* ``rotation``: a channel shift (c) and a c x c matrix (c^2) whose QR factor rotates the centre
  latent over channels; the latent is ``Q @ centre + mean_scale * shift``. A rotated standard
  Gaussian stays standard Gaussian, so every candidate is a plausible initial noise.
  (``rotational_transform``.)
* ``svd_rotation``: as ``rotation`` but the matrix keeps its singular vectors and has its singular
  values clamped to [1 - bound, 1 + bound], a near-orthogonal map. (``svd_rot_transform``.)
* ``multi_axis_rotation``: ``rotation`` applied successively along the channel, height and width
  axes, each rotation followed by its own shift, broadcast along the other two axes
  (``multi_axis_rot``): x = Qc.centre + m.sc (sc over c); x = Qh.x + m.sh (sh over h);
  x = Qw.x + m.sw (sw over w), with m = mean_scale. The solution is laid out
  ``[sc (c), Mc (c*c), sh (h), Mh (h*h), sw (w), Mw (w*w)]``, matrices row-major, length
  c + c^2 + h + h^2 + w + w^2. Note that the h and w rotations also mix the earlier shifts.
* ``multi_axis_svd_rotation``: as ``multi_axis_rotation`` with ``svd_rotation``'s clamped matrix
  on each axis (``multi_axis_svd_rot``; one ``bound`` for all three axes).

The identity solution (zero shifts, identity matrices) gives back the centre latent in every
rotation space. The matrix products run at HIGHEST precision so this holds exactly on
accelerators too (the default f32 matmul there may round the centre through TF32/bf16).

Differences from the reference, all deliberate:

* QR sign: the reference takes ``torch.linalg.qr`` as is; we make R's diagonal positive, so Q is
  unique and the identity matrix maps to the identity (the identity solution is the centre).
* The reference's sampler receives a difference Δ from the centre and uses ``centre + Δ`` when
  add_noise is true, ``Δ`` alone when false. For the rotation spaces, add_noise=True gives back
  exactly what we compute (``Q @ centre + mean_scale * shift``). The add_noise=False combination
  with a rotation space (latent = Q c + s μ - c, a near-zero latent at the identity) is a quirk
  of the reference and is not offered.
* SVD: the reference builds ``u @ diag(clamp(s)) @ v.mT`` from ``torch.linalg.svd``, which returns
  V^H, so it pairs U with V^T instead of V^H (still clamped singular values, but not the input
  matrix even when its singular values are in bounds); we use ``u @ diag(clamp(s)) @ vh``.
* Defaults: ``mean_scale=0.01`` and ``bound=0.1`` for all rotation spaces, the reference's
  ``configs/sd.yaml`` ``noise_injection`` values (its ``configs/sd_rot.yaml`` uses 0.02 / 0.01;
  pass those through ``space_params`` to reproduce it).
* The multi-axis spaces refuse latents whose three matrices would hold more than
  ``MAX_MATRIX_ENTRIES`` numbers (see ``_multi_axis_shape``); the reference has no limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry

# The reference's sd.yaml noise_injection values.
DEFAULT_MEAN_SCALE = 0.01
DEFAULT_BOUND = 0.1

# c^2 + h^2 + w^2 above this is refused by the multi-axis spaces: 2**20 float32s is 4 MiB per
# candidate, the strategy keeps several popsize x dim arrays of it, and every candidate pays an
# O(n^3) QR/SVD per axis. A 724 x 724 latent (a 5792 px image at the usual VAE factor 8) is the
# largest square latent that fits; SD's 64 x 64 and SDXL's 128 x 128 are far below it.
MAX_MATRIX_ENTRIES = 2**20

_HIGHEST = jax.lax.Precision.HIGHEST


class SearchSpace(NamedTuple):
    init: Callable[[jax.Array], jax.Array]
    apply: Callable[[dict, jax.Array, jax.Array], jax.Array]
    default_params: dict[str, Any]


# The values each space parameter can take (closed ranges; every one must also be finite): the shift's scale is a
# magnitude, and singular values clamped to [1 - bound, 1 + bound] stay positive only for a bound below 1.
PARAM_RANGES = {"mean_scale": (0.0, math.inf), "bound": (0.0, 0.999)}


SPACES: Registry[Callable[[], SearchSpace]] = Registry("space")


@SPACES.register("noise")
def noise() -> SearchSpace:
    def init(centre):
        return centre.reshape(-1)

    def apply(params, solution, centre):
        return solution.reshape(centre.shape).astype(centre.dtype)

    return SearchSpace(init, apply, {})


@SPACES.register("additive_noise")
def additive_noise() -> SearchSpace:
    """The latent is the centre plus the solution (the reference's ``noise`` with add_noise=True)."""

    def init(centre):
        return jnp.zeros(centre.size, centre.dtype)

    def apply(params, solution, centre):
        return (centre + solution.reshape(centre.shape)).astype(centre.dtype)

    return SearchSpace(init, apply, {})


def _latent_axes(name: str, centre: jax.Array) -> tuple[int, int, int]:
    if centre.ndim != 3:
        raise JaxalignError(
            f"space {name!r} needs one latent [c, h, w] (3 axes, no batch axis), got shape {tuple(centre.shape)}"
        )
    return tuple(int(n) for n in centre.shape)


def _multi_axis_shape(name: str, centre: jax.Array) -> tuple[int, int, int]:
    c, h, w = _latent_axes(name, centre)
    entries = c * c + h * h + w * w
    if entries > MAX_MATRIX_ENTRIES:
        raise JaxalignError(
            f"space {name!r} on a latent [c, h, w] = [{c}, {h}, {w}] needs c^2 + h^2 + w^2 = {entries} matrix entries "
            f"(solution length {c + c * c + h + h * h + w + w * w}), above the limit of 2**20 = {MAX_MATRIX_ENTRIES} "
            "(about a 724x724 latent): every candidate would carry and decompose matrices that large; "
            "use a smaller latent or the 'rotation' / 'svd_rotation' space, which only mixes channels"
        )
    return c, h, w


def _channel_transform(name: str, to_matrix: Callable[[jax.Array, dict], jax.Array], default_params: dict) -> SearchSpace:
    def init(centre):
        c, _, _ = _latent_axes(name, centre)
        return jnp.concatenate([jnp.zeros(c, centre.dtype), jnp.eye(c, dtype=centre.dtype).reshape(-1)])

    def apply(params, solution, centre):
        c, _, _ = _latent_axes(name, centre)
        shift, matrix = solution[:c], solution[c:].reshape(c, c)
        mixed = jnp.einsum("ij,jhw->ihw", to_matrix(matrix, params), centre, precision=_HIGHEST)
        return (mixed + params["mean_scale"] * shift[:, None, None]).astype(centre.dtype)

    return SearchSpace(init, apply, default_params)


# One einsum per axis (the reference's "p c1 c", "p h1 h", "p w1 w" contractions) and the shape
# that broadcasts that axis's shift over the other two (its unsqueezes).
_AXIS_EINSUMS = ("ij,jhw->ihw", "ij,cjw->ciw", "ij,chj->chi")
_AXIS_SHIFT_SHAPES = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))


def _multi_axis_transform(name: str, to_matrix: Callable[[jax.Array, dict], jax.Array], default_params: dict) -> SearchSpace:
    def init(centre):
        parts = []
        for n in _multi_axis_shape(name, centre):
            parts += [jnp.zeros(n, centre.dtype), jnp.eye(n, dtype=centre.dtype).reshape(-1)]
        return jnp.concatenate(parts)

    def apply(params, solution, centre):
        x = centre
        offset = 0
        for n, subscripts, shift_shape in zip(_multi_axis_shape(name, centre), _AXIS_EINSUMS, _AXIS_SHIFT_SHAPES):
            shift = solution[offset : offset + n]
            matrix = solution[offset + n : offset + n + n * n].reshape(n, n)
            offset += n + n * n
            x = jnp.einsum(subscripts, to_matrix(matrix, params), x, precision=_HIGHEST)
            x = x + params["mean_scale"] * shift.reshape(shift_shape)
        return x.astype(centre.dtype)

    return SearchSpace(init, apply, default_params)


def orthogonal_factor(matrix: jax.Array) -> jax.Array:
    """Q of the QR decomposition with R's diagonal made positive, so Q is unique and Q(I) = I."""
    q, r = jnp.linalg.qr(matrix)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    return q * signs[None, :]


def clamped_singular_values(matrix: jax.Array, bound) -> jax.Array:
    u, s, vh = jnp.linalg.svd(matrix)
    return jnp.matmul(u * jnp.clip(s, 1.0 - bound, 1.0 + bound)[None, :], vh, precision=_HIGHEST)


@SPACES.register("rotation")
def rotation(mean_scale: float = DEFAULT_MEAN_SCALE) -> SearchSpace:
    return _channel_transform("rotation", lambda m, p: orthogonal_factor(m), {"mean_scale": mean_scale})


@SPACES.register("svd_rotation")
def svd_rotation(mean_scale: float = DEFAULT_MEAN_SCALE, bound: float = DEFAULT_BOUND) -> SearchSpace:
    return _channel_transform(
        "svd_rotation", lambda m, p: clamped_singular_values(m, p["bound"]), {"mean_scale": mean_scale, "bound": bound}
    )


@SPACES.register("multi_axis_rotation")
def multi_axis_rotation(mean_scale: float = DEFAULT_MEAN_SCALE) -> SearchSpace:
    return _multi_axis_transform("multi_axis_rotation", lambda m, p: orthogonal_factor(m), {"mean_scale": mean_scale})


@SPACES.register("multi_axis_svd_rotation")
def multi_axis_svd_rotation(mean_scale: float = DEFAULT_MEAN_SCALE, bound: float = DEFAULT_BOUND) -> SearchSpace:
    return _multi_axis_transform(
        "multi_axis_svd_rotation",
        lambda m, p: clamped_singular_values(m, p["bound"]),
        {"mean_scale": mean_scale, "bound": bound},
    )
