"""Search spaces: shapes, the identity solution, and the geometry of the transforms."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.spaces import MAX_MATRIX_ENTRIES, SPACES, clamped_singular_values, orthogonal_factor

SHAPE = (4, 6, 5)
C, H, W = SHAPE
MULTI_AXIS_DIMS = C + C**2 + H + H**2 + W + W**2
ROTATION_SPACES = ["rotation", "svd_rotation", "multi_axis_rotation", "multi_axis_svd_rotation"]
MULTI_AXIS_SPACES = ["multi_axis_rotation", "multi_axis_svd_rotation"]


@pytest.fixture
def centre():
    return jax.random.normal(jax.random.key(0), SHAPE)


def _apply(name, solution, centre, **params):
    space = SPACES[name]()
    return space.apply({**space.default_params, **params}, solution, centre)


# --- numpy version of the reference's multi_axis_rot / multi_axis_svd_rot ---------------------
# (pjjajal/diffusion-trajectory, noise_injection_pipelines/noise_injection.py), one candidate,
# no batch axis, with add_noise=True (centre + (x - centre) = x) and our QR sign fixing.


def _np_qr_rotation(matrix):
    q, r = np.linalg.qr(matrix)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def _np_svd_rotation(matrix, bound):
    u, s, vh = np.linalg.svd(matrix)
    return u @ np.diag(np.clip(s, 1 - bound, 1 + bound)) @ vh


def _np_multi_axis(solution, centre, mean_scale, to_rot):
    c, h, w = centre.shape
    slice_length_c = c + c**2
    slice_length_h = h + h**2 + slice_length_c
    slice_length_w = w + w**2 + slice_length_h
    axis_c = solution[:slice_length_c]
    axis_h = solution[slice_length_c:slice_length_h]
    axis_w = solution[slice_length_h:slice_length_w]

    rot = to_rot(axis_c[c:].reshape(c, c))
    x = np.einsum("chw,kc->khw", centre, rot)  # "b c h w, p c1 c -> p c1 h w"
    x = x + mean_scale * axis_c[:c][:, None, None]

    rot = to_rot(axis_h[h:].reshape(h, h))
    x = np.einsum("chw,kh->ckw", x, rot)  # "p c h w, p h1 h -> p c h1 w"
    x = x + mean_scale * axis_h[:h][None, :, None]

    rot = to_rot(axis_w[w:].reshape(w, w))
    x = np.einsum("chw,kw->chk", x, rot)  # "p c h w, p w1 w -> p c h w1"
    x = x + mean_scale * axis_w[:w][None, None, :]
    return x


def _multi_axis_solution(shifts, matrices):
    return jnp.concatenate([jnp.concatenate([s, m.reshape(-1)]) for s, m in zip(shifts, matrices)])


@pytest.mark.parametrize(
    "name,dims",
    [
        ("noise", C * H * W),
        ("additive_noise", C * H * W),
        ("rotation", C + C**2),
        ("svd_rotation", C + C**2),
        ("multi_axis_rotation", MULTI_AXIS_DIMS),
        ("multi_axis_svd_rotation", MULTI_AXIS_DIMS),
    ],
)
def test_population_of_solutions_gives_latents_of_the_right_shape(name, dims, centre):
    space = SPACES[name]()
    assert space.init(centre).shape == (dims,)
    solutions = jax.random.normal(jax.random.key(1), (7, dims))
    latents = jax.jit(jax.vmap(space.apply, in_axes=(None, 0, None)))(space.default_params, solutions, centre)
    assert latents.shape == (7, *SHAPE)
    assert bool(jnp.isfinite(latents).all())


def test_every_space_is_covered_by_the_shape_test():
    assert set(SPACES) == {"noise", "additive_noise", *ROTATION_SPACES}


@pytest.mark.parametrize("name", list(SPACES))
def test_init_solution_gives_back_the_centre(name, centre):
    space = SPACES[name]()
    np.testing.assert_allclose(np.asarray(space.apply(space.default_params, space.init(centre), centre)), np.asarray(centre), atol=1e-6)
    # Also under jit, with traced params and a large shift scale: the identity has zero shifts.
    params = {k: jnp.float32(3.0 if k == "mean_scale" else v) for k, v in space.default_params.items()}
    latent = jax.jit(lambda p, x: space.apply(p, space.init(x), x))(params, centre)
    np.testing.assert_allclose(np.asarray(latent), np.asarray(centre), atol=1e-6)


@pytest.mark.parametrize("name", MULTI_AXIS_SPACES)
def test_multi_axis_identity_solution_uses_the_reference_layout(name, centre):
    solution = np.asarray(SPACES[name]().init(centre))
    expected = np.concatenate([np.concatenate([np.zeros(n), np.eye(n).reshape(-1)]) for n in SHAPE])
    np.testing.assert_array_equal(solution, expected)


@pytest.mark.parametrize("name", MULTI_AXIS_SPACES)
def test_multi_axis_matches_a_numpy_version_of_the_reference(name, centre):
    solution = np.asarray(jax.random.normal(jax.random.key(3), (MULTI_AXIS_DIMS,)))
    to_rot = _np_qr_rotation if name == "multi_axis_rotation" else (lambda m: _np_svd_rotation(m, 0.3))
    params = {"mean_scale": 0.5} if name == "multi_axis_rotation" else {"mean_scale": 0.5, "bound": 0.3}
    latent = _apply(name, jnp.asarray(solution), centre, **params)
    expected = _np_multi_axis(solution.astype(np.float64), np.asarray(centre, np.float64), 0.5, to_rot)
    np.testing.assert_allclose(np.asarray(latent), expected, rtol=1e-4, atol=1e-4)


def test_multi_axis_rotation_with_channel_part_only_equals_rotation(centre):
    shift = jax.random.normal(jax.random.key(5), (C,))
    matrix = jax.random.normal(jax.random.key(6), (C, C))
    solution = _multi_axis_solution([shift, jnp.zeros(H), jnp.zeros(W)], [matrix, jnp.eye(H), jnp.eye(W)])
    expected = _apply("rotation", jnp.concatenate([shift, matrix.reshape(-1)]), centre, mean_scale=0.5)
    np.testing.assert_allclose(np.asarray(_apply("multi_axis_rotation", solution, centre, mean_scale=0.5)), np.asarray(expected), atol=1e-5)


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


def test_multi_axis_rotation_keeps_a_gaussian_latent_gaussian():
    shape = (4, 64, 64)
    latent_centre = jax.random.normal(jax.random.key(7), shape)
    keys = jax.random.split(jax.random.key(8), 3)
    matrices = [jax.random.normal(k, (n, n)) for k, n in zip(keys, shape)]
    solution = _multi_axis_solution([jnp.zeros(n) for n in shape], matrices)
    latent = np.asarray(_apply("multi_axis_rotation", solution, latent_centre))
    # Zero shifts: an orthogonal map on every axis keeps the norm exactly...
    np.testing.assert_allclose(np.linalg.norm(latent), np.linalg.norm(np.asarray(latent_centre)), rtol=1e-5)
    assert not np.allclose(latent, np.asarray(latent_centre), atol=0.1)
    # ...and a rotated standard Gaussian is standard Gaussian: per-channel mean ~0 and std ~1
    # (4096 values per channel: the sampling error is ~0.016 on each).
    np.testing.assert_allclose(latent.mean(axis=(1, 2)), 0.0, atol=0.08)
    np.testing.assert_allclose(latent.std(axis=(1, 2)), 1.0, atol=0.08)


def test_qr_factor_is_sign_normalised():
    np.testing.assert_allclose(np.asarray(orthogonal_factor(jnp.eye(3))), np.eye(3))
    np.testing.assert_allclose(np.asarray(orthogonal_factor(-2.0 * jnp.eye(3))), -np.eye(3), atol=1e-6)


def test_svd_rotation_clamps_singular_values():
    matrix = jnp.diag(jnp.array([3.0, 1.0, 0.2])) @ orthogonal_factor(jax.random.normal(jax.random.key(4), (3, 3)))
    clamped = clamped_singular_values(matrix, 0.05)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(clamped), compute_uv=False), [1.05, 1.0, 0.95], rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name,bound", [("multi_axis_svd_rotation", 0.1), ("multi_axis_rotation", 0.0)])
def test_multi_axis_map_on_each_axis_has_bounded_singular_values(name, bound, axis, centre):
    # Only one axis gets a far-from-orthogonal matrix; the linear map centre -> latent (zero
    # shifts) is then I (x) M (x) I, whose singular values are M's as applied.
    n = SHAPE[axis]
    wild = jnp.diag(jnp.linspace(0.1, 4.0, n)) @ jax.random.normal(jax.random.key(9), (n, n))
    matrices = [wild if k == axis else jnp.eye(m) for k, m in enumerate(SHAPE)]
    solution = _multi_axis_solution([jnp.zeros(m) for m in SHAPE], matrices)
    jacobian = jax.jacfwd(lambda x: _apply(name, solution, x))(centre).reshape(centre.size, centre.size)
    singular_values = np.linalg.svd(np.asarray(jacobian), compute_uv=False)
    assert singular_values.max() <= 1 + bound + 1e-5 and singular_values.min() >= 1 - bound - 1e-5
    np.testing.assert_allclose([singular_values.max(), singular_values.min()], [1 + bound, 1 - bound], atol=1e-5)


def test_additive_noise_adds_the_solution_to_the_centre(centre):
    solution = jax.random.normal(jax.random.key(10), (centre.size,))
    latent = _apply("additive_noise", solution, centre)
    np.testing.assert_allclose(np.asarray(latent), np.asarray(centre) + np.asarray(solution).reshape(SHAPE), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(SPACES["additive_noise"]().init(centre)), np.zeros(centre.size))


@pytest.mark.parametrize("name", ROTATION_SPACES)
def test_rotation_spaces_default_to_the_reference_sd_config(name):
    params = SPACES[name]().default_params
    assert params["mean_scale"] == 0.01
    assert params.get("bound", 0.1) == 0.1


@pytest.mark.parametrize("name", MULTI_AXIS_SPACES)
def test_multi_axis_refuses_a_latent_that_makes_the_solution_too_long(name):
    assert MAX_MATRIX_ENTRIES == 2**20
    space = SPACES[name]()
    assert space.init(np.zeros((4, 724, 724), np.float32)).shape == (4 + 16 + 2 * (724 + 724**2),)
    for shape in [(4, 725, 725), (4, 1024, 8)]:
        with pytest.raises(JaxalignError, match=rf"space '{name}' on a latent \[c, h, w\] = \[{shape[0]}, {shape[1]}, {shape[2]}\].*limit of 2\*\*20 = 1048576"):
            space.init(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", ROTATION_SPACES)
@pytest.mark.parametrize("shape", [(1, 4, 6, 5), (4, 30)])
def test_rotation_spaces_refuse_a_centre_that_is_not_c_h_w(name, shape):
    with pytest.raises(JaxalignError, match=rf"space '{name}' needs one latent \[c, h, w\] \(3 axes, no batch axis\), got shape " + re.escape(str(shape))):
        SPACES[name]().init(jnp.zeros(shape))


def test_unknown_space_lists_valid_names():
    with pytest.raises(
        JaxalignError,
        match="unknown space 'spiral'; valid: additive_noise, multi_axis_rotation, multi_axis_svd_rotation, noise, rotation, svd_rotation",
    ):
        SPACES["spiral"]
