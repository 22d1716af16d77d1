"""The tiny CLIP of the embedded world: its batches, its loss, the shipped weights' zero-shot reading."""

import functools

import jax
import numpy as np

from jaxalign import shapes, train
from jaxalign.models import load_clip
from jaxalign.tiny_clip import _sibling, attribute_accuracy, contrastive_batch, contrastive_loss, init_tiny_clip, zero_shot_read


def test_siblings_differ_in_one_attribute_and_stay_training_combinations():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = shapes.sample_attributes(rng)
        b = _sibling(a, rng)
        assert sum(x != y for x, y in zip(a, b)) == 1
        assert b.colour != b.background and (b.shape, b.colour, b.background) not in shapes.HELD_OUT


def test_contrastive_training_lowers_the_loss(tmp_path):
    clip, params = init_tiny_clip(0)
    loss_fn = contrastive_loss(clip)
    batch = contrastive_batch(clip, 99, 0, 16)
    before = float(jax.jit(loss_fn)(params, {}, batch, None)[0])
    config = train.StageConfig(steps=20, batch_size=16, warmup_steps=5)
    state = train.run_stage("clip", functools.partial(contrastive_batch, clip, 0), loss_fn, params, {}, config, tmp_path, 0, checkpoint_every=0, progress=False)
    after = float(jax.jit(loss_fn)(state.params, {}, batch, None)[0])
    assert after < 0.9 * before


def test_shipped_tiny_clip_reads_held_out_images_above_chance():
    clip, params = load_clip("embedded")
    data = shapes.make_batch(2024, 48, held_out=True)
    accuracy = attribute_accuracy(zero_shot_read(clip, params, data.images, data.attributes), data.attributes)
    chance = {"shape": 1 / 3, "colour": 1 / 7, "background": 1 / 7, "size": 1 / 2, "position": 1 / 5}
    assert all(accuracy[f] > chance[f] + 0.15 for f in chance), accuracy
