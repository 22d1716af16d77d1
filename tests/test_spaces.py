"""Search spaces: shapes, the identity solution, and the geometry of the transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.spaces import SPACES, clamped_singular_values, orthogonal_factor

SHAPE = (4, 6, 5)


@pytest.fixture
def centre():
    return jax.random.normal(jax.random.key(0), SHAPE)


@pytest.mark.parametrize("name,dims", [("noise", 4 * 6 * 5), ("rotation", 4 + 16), ("svd_rotation", 4 + 16)])
def test_population_of_solutions_gives_latents_of_the_right_shape(name, dims, centre):
    space = SPACES[name]()
    assert space.init(centre).shape == (dims,)
    solutions = jax.random.normal(jax.random.key(1), (7, dims))
    latents = jax.vmap(space.apply, in_axes=(None, 0, None))(space.default_params, solutions, centre)
    assert latents.shape == (7, *SHAPE)
    assert bool(jnp.isfinite(latents).all())


@pytest.mark.parametrize("name", list(SPACES))
def test_init_solution_gives_back_the_centre(name, centre):
    space = SPACES[name]()
    np.testing.assert_allclose(np.asarray(space.apply(space.default_params, space.init(centre), centre)), np.asarray(centre), atol=1e-6)


def test_rotation_rotates_channels_and_shifts(centre):
    space = SPACES["rotation"]()
    matrix = jax.random.normal(jax.random.key(2), (4, 4))
    shift = jnp.array([0.5, -1.0, 0.0, 2.0])
    params = {"mean_scale": jnp.float32(0.5)}
    latent = space.apply(params, jnp.concatenate([shift, matrix.reshape(-1)]), centre)
    q = orthogonal_factor(matrix)
    np.testing.assert_allclose(np.asarray(q.T @ q), np.eye(4), atol=1e-5)
    unshifted = latent - 0.5 * shift[:, None, None]
    # An orthogonal map over channels keeps each pixel's channel-vector norm.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(unshifted), axis=0), np.linalg.norm(np.asarray(centre), axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(unshifted), np.einsum("ij,jhw->ihw", np.asarray(q), np.asarray(centre)), atol=1e-5)


def test_qr_factor_is_sign_normalised():
    np.testing.assert_allclose(np.asarray(orthogonal_factor(jnp.eye(3))), np.eye(3))
    np.testing.assert_allclose(np.asarray(orthogonal_factor(-2.0 * jnp.eye(3))), -np.eye(3), atol=1e-6)


def test_svd_rotation_clamps_singular_values():
    matrix = jnp.diag(jnp.array([3.0, 1.0, 0.2])) @ orthogonal_factor(jax.random.normal(jax.random.key(4), (3, 3)))
    clamped = clamped_singular_values(matrix, 0.05)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(clamped), compute_uv=False), [1.05, 1.0, 0.95], rtol=1e-5)


def test_unknown_space_lists_valid_names():
    with pytest.raises(JaxalignError, match="unknown space 'spiral'; valid: noise, rotation, svd_rotation"):
        SPACES["spiral"]
