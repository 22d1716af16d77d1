"""Rewards against values computed by hand on small images."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxalign.errors import JaxalignError
from jaxalign.rewards import REWARDS, jpeg_size_kb, weighted_sum

# The paper's weight-free rewards (pjjajal/diffusion-trajectory fitness/fitness_fn.py) score PIL images,
# i.e. the uint8 levels round(255 x). Two 2x2 images, pixels in reading order, with their 255 x values.
IMAGES = jnp.array(
    [
        # pure red (255, 0, 0); (0.2, 0.4, 0.6) = (51, 102, 153); white (255, 255, 255); black (0, 0, 0)
        [[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]], [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]],
        # (100, 50, 30); (0.003, 0.002, 0.002) = (0.765, 0.51, 0.51), which the reference rounds to (1, 1, 1);
        # (200, 150, 7); (1, 0, 0). The dark and odd pixels are where uint8 rounding and PIL's truncation show.
        [[[100 / 255, 50 / 255, 30 / 255], [0.003, 0.002, 0.002]], [[200 / 255, 150 / 255, 7 / 255], [1 / 255, 0.0, 0.0]]],
    ],
    jnp.float32,
)


def score(name, images=IMAGES):
    return np.asarray(REWARDS[name]().fn(images))


def test_brightness_is_the_mean_hsv_value():
    # mean over pixels of max(R, G, B) / 255
    expected = [
        (255 + 153 + 255 + 0) / 4 / 255,  # = (1 + 0.6 + 1 + 0) / 4 = 0.65
        (100 + 0.765 + 200 + 1) / 4 / 255,  # = 0.295848 (no uint8 rounding: the reference's 1 for 0.765 would give 0.296078)
    ]
    np.testing.assert_allclose(score("brightness"), expected, rtol=1e-6)


def test_relative_luminance_weights_unlinearised_levels():
    # mean over pixels of (0.2126 R + 0.7152 G + 0.0722 B) / 255, no sRGB linearisation
    expected = [
        # red 0.2126; (0.2, 0.4, 0.6): 0.04252 + 0.28608 + 0.04332 = 0.37192; white 1; black 0
        (0.2126 + 0.37192 + 1.0 + 0.0) / 4,  # = 0.39613
        # (100, 50, 30): 21.26 + 35.76 + 2.166 = 59.186; (0.765, 0.51, 0.51): 0.162639 + 0.364752 + 0.036822
        # = 0.564213; (200, 150, 7): 42.52 + 107.28 + 0.5054 = 150.3054; (1, 0, 0): 0.2126
        (59.186 + 0.564213 + 150.3054 + 0.2126) / 4 / 255,  # = 0.206145
    ]
    np.testing.assert_allclose(score("relative_luminance"), expected, rtol=1e-6)


def test_contrast_is_the_rms_of_the_channel_mean_in_0_255():
    # grey = (R + G + B) / 3 per pixel; contrast = sqrt(mean((grey - mean(grey))^2)), not divided by 255
    # image 0: greys 85, 102, 255, 0; mean 110.5; deviations -25.5, -8.5, 144.5, -110.5
    first = np.sqrt((25.5**2 + 8.5**2 + 144.5**2 + 110.5**2) / 4)  # = sqrt(33813 / 4) = 91.9416
    # image 1: greys 60, (0.765 + 0.51 + 0.51) / 3 = 0.595, 119, 1/3; mean 179.928333 / 4 = 44.982083
    m = (60 + 0.595 + 119 + 1 / 3) / 4
    second = np.sqrt(((60 - m) ** 2 + (0.595 - m) ** 2 + (119 - m) ** 2 + (1 / 3 - m) ** 2) / 4)  # = 49.1628
    np.testing.assert_allclose(score("contrast"), [first, second], rtol=1e-5)
    # A flat image has contrast exactly 0 and a finite gradient.
    flat = jnp.full((1, 4, 4, 3), 0.3)
    assert float(score("contrast", flat)[0]) == 0.0
    assert bool(jnp.isfinite(jax.grad(lambda x: REWARDS["contrast"]().fn(x).sum())(flat)).all())


def test_saturation_is_pil_hsv_saturation():
    # mean over pixels of floor(255 (max - min) / max) / 255, 0 where max = 0
    expected = [
        # red 255 * 255 / 255 = 255; (51, 102, 153): 255 * 102 / 153 = 170 exactly; white 0; black 0
        (255 + 170 + 0 + 0) / 4 / 255,  # = (1 + 2/3) / 4 = 0.416667 (without the division by max: 0.35)
        # (100, 50, 30): floor(255 * 70 / 100) = floor(178.5) = 178; (1, 1, 1): 0;
        # (200, 150, 7): floor(255 * 193 / 200) = floor(246.075) = 246; (1, 0, 0): 255
        (178 + 0 + 246 + 255) / 4 / 255,  # = 0.665686 (the float formula would give 0.7496)
    ]
    np.testing.assert_allclose(score("saturation"), expected, rtol=1e-6)


def _levels(images):
    """The uint8 image the reference scores: diffusers' round(255 x)."""
    return np.clip(np.round(np.asarray(images, np.float32) * 255), 0, 255).astype(np.uint8)


def _reference(name, images):
    """The reference's computation, redone with numpy and PIL on the uint8 image it would get."""
    values = []
    for pixels in _levels(images):
        if name in ("brightness", "saturation"):
            hsv = np.asarray(Image.fromarray(pixels).convert("HSV"))  # PIL computes H, S, V from uint8 pixels
            values.append(hsv[..., 2 if name == "brightness" else 1].mean() / 255.0)
        elif name == "relative_luminance":
            channel_means = pixels.astype(np.float64).mean(axis=(0, 1))
            values.append(float(np.dot(channel_means, [0.2126, 0.7152, 0.0722])) / 255.0)
        else:
            grey = pixels.astype(np.float32).mean(axis=2)
            values.append(np.sqrt(np.mean((grey - grey.mean()) ** 2)))
    return np.asarray(values)


@pytest.mark.parametrize("name", ["brightness", "relative_luminance", "contrast", "saturation"])
def test_reference_rewards_match_a_numpy_and_pil_reproduction_on_random_images(name):
    images = jax.random.uniform(jax.random.key(3), (3, 17, 13, 3))
    images = images.at[1].multiply(0.02)  # a dark image: many pixels of levels 0-5
    on_grid = jnp.asarray(_levels(images) / 255.0, jnp.float32)  # what the reference's PIL image holds
    fn = jax.jit(REWARDS[name]().fn)
    np.testing.assert_allclose(np.asarray(fn(on_grid)), _reference(name, images), rtol=2e-5, atol=1e-7)
    # Off the uint8 grid, saturation still matches exactly (it rounds as the reference does); the
    # others skip the rounding and stay within half a level (much less on average).
    off_grid = np.asarray(fn(images))
    if name == "saturation":
        np.testing.assert_allclose(off_grid, _reference(name, images), rtol=2e-5, atol=1e-7)
    else:
        np.testing.assert_allclose(off_grid, _reference(name, images), atol=0.5 if name == "contrast" else 0.5 / 255)


def test_saturation_matches_pil_for_every_pair_of_levels():
    # One pixel (M, M - d, M - d) per 0 <= d <= M <= 255: PIL's S channel against ours.
    high, drop = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    keep = drop <= high
    high, low = high[keep], (high - drop)[keep]
    pixels = np.stack([high, low, low], axis=-1).astype(np.uint8)[None]  # [1, 32896, 3]
    pil = np.asarray(Image.fromarray(pixels).convert("HSV"))[0, :, 1]
    ours = REWARDS["saturation"]().fn(jnp.asarray(pixels[:, :, None, :] / 255.0, jnp.float32).transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(np.round(np.asarray(ours) * 255).astype(int), pil.astype(int))


def test_gradients_of_the_reference_rewards():
    images = jax.random.uniform(jax.random.key(4), (2, 4, 4, 3), minval=0.1)
    # saturation: straight-through, the gradient of the float formula (max - min) / max
    ours = jax.grad(lambda x: REWARDS["saturation"]().fn(x).sum())(images)
    smooth = jax.grad(lambda x: REWARDS["continuous_saturation"]().fn(x).sum())(images)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(smooth), rtol=1e-4, atol=1e-7)
    # the others are smooth: their gradients agree with finite differences
    direction = jax.random.normal(jax.random.key(5), images.shape)
    for name in ("brightness", "relative_luminance", "contrast"):
        fn = jax.jit(lambda x: REWARDS[name]().fn(x).sum())
        analytic = float(jnp.vdot(jax.grad(fn)(images), direction))
        h = 1e-3
        numeric = float((fn(images + h * direction) - fn(images - h * direction)) / (2 * h))
        assert analytic == pytest.approx(numeric, rel=1e-2), name


def test_old_definitions_keep_descriptive_names():
    # mean_intensity: mean over pixels and channels; image 0, per-pixel channel means 1/3, 0.4, 1, 0
    np.testing.assert_allclose(score("mean_intensity")[0], (1 / 3 + 0.4 + 1 + 0) / 4, rtol=1e-6)
    # wcag_luminance: sRGB linearised first; (0.2, 0.4, 0.6) -> 0.0331048, 0.1328683, 0.3185468
    lin = [((v + 0.055) / 1.055) ** 2.4 for v in (0.2, 0.4, 0.6)]
    pixel = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]  # = 0.125065
    np.testing.assert_allclose(score("wcag_luminance")[0], (0.2126 + pixel + 1 + 0) / 4, rtol=1e-5)
    # luma_rms_contrast: std of Rec. 709 luma in [0, 1]: lumas 0.2126, 0.37192, 1, 0
    luma = np.array([0.2126, 0.37192, 1.0, 0.0])
    np.testing.assert_allclose(score("luma_rms_contrast")[0], np.sqrt(np.mean((luma - luma.mean()) ** 2)), rtol=1e-5)
    # continuous_saturation: (max - min) / max on the float pixels: 1, 2/3, 0, 0; and 0.7, 1/3, 0.965, 1
    np.testing.assert_allclose(score("continuous_saturation"), [(1 + 2 / 3) / 4, (0.7 + 1 / 3 + 0.965 + 1) / 4], rtol=1e-5)


def test_jpeg_size_is_the_positive_size_in_kb_and_runs_under_jit():
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
    images = images.at[0].set(0.5)  # a flat image compresses far better than noise
    expected = []
    for pixels in _levels(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        expected.append(buffer.tell() / 1000)  # kB of 1000 bytes, positive, as the reference returns it
    scores = jax.jit(REWARDS["jpeg_size_kb"]().fn)(images)
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-6)
    assert scores[0] < scores[1]  # smaller = more compressible
    np.testing.assert_allclose(jpeg_size_kb(np.asarray(images)), expected, rtol=1e-6)
    # jpeg_compressibility is DDPO's sign: minus the size, higher = more compressible.
    np.testing.assert_allclose(np.asarray(jax.jit(REWARDS["jpeg_compressibility"]().fn)(images)), -np.asarray(expected), rtol=1e-6)


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
    names = ("brightness", "relative_luminance", "contrast", "saturation")
    for name in names + ("mean_intensity", "wcag_luminance", "luma_rms_contrast", "continuous_saturation"):
        grad = jax.grad(lambda x: REWARDS[name]().fn(x).sum())(jax.random.uniform(jax.random.key(1), (2, 4, 4, 3)))
        assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).sum()) > 0, name


def test_unknown_reward_and_empty_rewards():
    with pytest.raises(JaxalignError, match="unknown reward .beauty.; valid: aesthetic, brightness, clip, color_fraction, continuous_saturation, contrast, hpsv2, imagereward, jpeg_compressibility, jpeg_size_kb, luma_rms_contrast, mean_intensity"):
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


def test_an_error_inside_a_constructor_is_not_reported_as_a_wrong_argument(monkeypatch):
    from jaxalign.rewards import parse_reward

    def broken():
        raise TypeError("a bug inside the constructor")

    monkeypatch.setitem(REWARDS._entries, "broken", broken)
    with pytest.raises(TypeError, match="a bug inside the constructor"):
        parse_reward("broken")
    with pytest.raises(JaxalignError, match="reward 'broken' takes no argument"):
        parse_reward("broken:1")


def test_learned_rewards_are_exactly_those_that_read_weights():
    import inspect

    from jaxalign.rewards import is_learned

    for name, constructor in REWARDS.items():
        assert is_learned(name) == ("path" in inspect.signature(constructor).parameters), name
    assert is_learned("clip") and is_learned("imagereward") and not is_learned("color_fraction:red")
