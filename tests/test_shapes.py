"""The procedural shapes data: captions match pixels, held-out combinations stay out of training."""

import numpy as np
import pytest

from jaxalign import shapes


def test_captions_match_pixels():
    batch = shapes.make_batch(seed=11, size=400)
    read = [shapes.describe(image) for image in batch.images]
    for text, truth, seen in zip(batch.captions, batch.attributes, read):
        assert f"{truth.colour} {truth.shape} on a {truth.background} background" in text
        assert seen is not None
        # Colours and positions are unambiguous in pixels.
        assert (seen.colour, seen.background, seen.position) == (truth.colour, truth.background, truth.position)
    # Shape and size of the smallest shapes (radius ~4 px) can be a pixel or two ambiguous.
    assert np.mean([seen == truth for seen, truth in zip(read, batch.attributes)]) >= 0.99


def test_captions_name_size_and_position_when_given():
    batch = shapes.make_batch(seed=12, size=200)
    with_size = [a.size in text for text, a in zip(batch.captions, batch.attributes)]
    with_position = [a.position in text for text, a in zip(batch.captions, batch.attributes)]
    # About three quarters of the captions give each of them; the rest leave it out.
    assert 0.6 < np.mean(with_size) < 0.9 and 0.6 < np.mean(with_position) < 0.9


def test_held_out_combinations_never_appear_in_training_batches():
    train = shapes.make_batch(seed=13, size=500)
    held = shapes.make_batch(seed=13, size=100, held_out=True)
    assert not any((a.shape, a.colour, a.background) in shapes.HELD_OUT for a in train.attributes)
    assert all((a.shape, a.colour, a.background) in shapes.HELD_OUT for a in held.attributes)
    assert 0.1 < len(shapes.HELD_OUT) / (len(shapes.SHAPES) * len(shapes.COLOURS) * (len(shapes.COLOURS) - 1)) < 0.2


def test_batches_are_deterministic_in_their_seed():
    a, b, c = (shapes.make_batch(seed, 8) for seed in (5, 5, 6))
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (8, 32, 32, 3) and a.images.min() >= 0 and a.images.max() <= 1


@pytest.mark.parametrize("colour", sorted(shapes.COLOURS))
def test_plain_background_is_read_as_no_shape(colour):
    image = np.broadcast_to(np.asarray(shapes.COLOURS[colour], np.float32), (32, 32, 3))
    assert shapes.describe(image) is None
