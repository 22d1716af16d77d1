"""Rewards against values computed by hand on small images."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxalign.errors import JaxalignError
from jaxalign.rewards import REWARDS, jpeg_size_kb, weighted_sum

# Two 1x2 images: [black, pure red] and [white, mid grey (0.5)].
IMAGES = jnp.array(
    [
        [[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]],
        [[[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]],
    ],
    jnp.float32,
)


def score(name, images=IMAGES):
    return np.asarray(REWARDS[name]().fn(images))


def test_brightness():
    np.testing.assert_allclose(score("brightness"), [(0 + 1 / 3) / 2, (1 + 0.5) / 2], rtol=1e-6)


def test_relative_luminance():
    grey = ((0.5 + 0.055) / 1.055) ** 2.4  # sRGB 0.5 linearised, 0.21404
    np.testing.assert_allclose(score("relative_luminance"), [0.2126 / 2, (1.0 + grey) / 2], rtol=1e-5)


def test_contrast():
    # Luma (Rec. 709 weights): image 0 = [0, 0.2126], image 1 = [1, 0.5]; population std over 2 pixels.
    np.testing.assert_allclose(score("contrast"), [0.2126 / 2, 0.25], rtol=1e-5)


def test_saturation():
    np.testing.assert_allclose(score("saturation"), [(0.0 + 1.0) / 2, 0.0], atol=1e-6)


def test_jpeg_compressibility_matches_pil_and_runs_under_jit():
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
    images = images.at[0].set(0.5)  # a flat image compresses far better than noise
    expected = []
    for image in np.asarray(images):
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.round(image * 255), 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
        expected.append(-buffer.tell() / 1000)
    scores = jax.jit(REWARDS["jpeg_compressibility"]().fn)(images)
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-6)
    assert scores[0] > scores[1]
    np.testing.assert_allclose(jpeg_size_kb(np.asarray(images)), -np.asarray(expected), rtol=1e-6)


def test_jpeg_is_one_host_call_for_the_population(monkeypatch):
    import jaxalign.rewards as rewards

    calls = []
    original = rewards.jpeg_size_kb

    def counting(images, quality=95):
        calls.append(images.shape)
        return original(images, quality)

    monkeypatch.setattr(rewards, "jpeg_size_kb", counting)
    jax.jit(rewards.REWARDS["jpeg_compressibility"]().fn)(jnp.zeros((5, 8, 8, 3))).block_until_ready()
    assert calls == [(5, 8, 8, 3)]


def test_weighted_sum_reports_components():
    objective = weighted_sum({"brightness": 2.0, "saturation": -1.0})
    total, components = objective.fn(IMAGES, {"brightness": 2.0, "saturation": -1.0})
    np.testing.assert_allclose(np.asarray(total), 2 * score("brightness") - score("saturation"), rtol=1e-6)
    assert set(components) == {"brightness", "saturation"}
    assert objective.differentiable
    assert not weighted_sum({"jpeg_compressibility": 1.0}).differentiable


def test_weights_are_traced():
    objective = weighted_sum({"brightness": 1.0})
    fn = jax.jit(objective.fn)
    a, _ = fn(IMAGES, {"brightness": jnp.float32(1.0)})
    b, _ = fn(IMAGES, {"brightness": jnp.float32(3.0)})
    np.testing.assert_allclose(np.asarray(b), 3 * np.asarray(a), rtol=1e-6)
    assert fn._cache_size() == 1


def test_differentiable_rewards_have_gradients():
    for name in ("brightness", "relative_luminance", "contrast", "saturation"):
        grad = jax.grad(lambda x: REWARDS[name]().fn(x).sum())(jax.random.uniform(jax.random.key(1), (2, 4, 4, 3)))
        assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).sum()) > 0, name


def test_unknown_reward_and_empty_rewards():
    with pytest.raises(JaxalignError, match="unknown reward .beauty.; valid: aesthetic, brightness, clip, color_fraction, contrast, hpsv2, imagereward, jpeg_compressibility"):
        weighted_sum({"beauty": 1.0})
    with pytest.raises(JaxalignError, match="empty"):
        weighted_sum({})


def test_color_fraction_counts_pixels_of_the_named_colour():
    from jaxalign.rewards import parse_reward
    from jaxalign.shapes import COLOURS

    red, blue = (np.broadcast_to(np.asarray(COLOURS[c], np.float32), (8, 8, 3)) for c in ("red", "blue"))
    half = np.concatenate([red[:4], blue[4:]])
    images = jnp.asarray(np.stack([red, blue, half]))
    reward = parse_reward("color_fraction:red")
    np.testing.assert_allclose(np.asarray(reward.fn(images)), [1.0, 0.0, 0.5], atol=1e-3)
    # Every other named colour is far enough not to count.
    others = jnp.asarray(np.stack([np.broadcast_to(np.asarray(v, np.float32), (4, 4, 3)) for k, v in COLOURS.items() if k != "red"]))
    assert float(jnp.max(reward.fn(others))) < 0.01
    assert reward.differentiable
    grad = jax.grad(lambda x: reward.fn(x).sum())(images * 0.9)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("color_fraction", "takes an argument, as color_fraction:<value>"),
        ("color_fraction:pink", "unknown colour 'pink' for color_fraction"),
        ("brightness:2", "reward 'brightness' takes no argument"),
    ],
)
def test_reward_arguments_are_checked(spec, message):
    from jaxalign.rewards import parse_reward

    with pytest.raises(JaxalignError, match=message):
        parse_reward(spec)
