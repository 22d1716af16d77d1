"""Training the embedded model: short runs lower the loss, resume reproduces, the export loads."""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import train
from jaxalign.models import EMBEDDED_DIR, init_model, load_model


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    # The shipped configs and tokenizer, without the shipped weights.
    path = tmp_path_factory.mktemp("configs")
    for item in EMBEDDED_DIR.iterdir():
        if item.is_dir():
            shutil.copytree(item, path / item.name, ignore=shutil.ignore_patterns("*.msgpack"))
        else:
            shutil.copy(item, path / item.name)
    return path


def _fixed_loss(loss_fn, params, frozen, batch):
    return float(jax.jit(loss_fn)(params, frozen, batch, jax.random.key(123))[0])


def test_autoencoder_training_lowers_the_loss(config_dir, tmp_path):
    model, params = init_model(config_dir)
    loss_fn = train.autoencoder_loss(model)
    batch = train.shapes_batch(model, 99, "held", 0, 16)
    before = _fixed_loss(loss_fn, {"vae": params["vae"]}, {}, batch)
    config = train.StageConfig(steps=40, batch_size=16, warmup_steps=5)
    state = train.run_stage("autoencoder", functools.partial(train.shapes_batch, model, 0, "autoencoder"), loss_fn, {"vae": params["vae"]}, {}, config, tmp_path, 0, checkpoint_every=0, progress=False)
    after = _fixed_loss(loss_fn, state.params, {}, batch)
    assert after < 0.85 * before
    rows = train._read_csv(tmp_path / "autoencoder_loss.csv")
    assert [int(r["step"]) for r in rows] == [25, 40]


def test_denoiser_training_lowers_the_loss_and_resumes_exactly(config_dir, tmp_path):
    model, params = init_model(config_dir)
    loss_fn = train.denoiser_loss(model)
    trainable = {"text_encoder": params["text_encoder"], "unet": params["unet"]}
    frozen = {"vae": params["vae"]}
    batch = train.shapes_batch(model, 99, "held", 0, 16)
    before = _fixed_loss(loss_fn, trainable, frozen, batch)
    config = train.StageConfig(steps=12, batch_size=8, warmup_steps=2)
    straight = train.run_stage("denoiser", functools.partial(train.shapes_batch, model, 0, "denoiser"), loss_fn, trainable, frozen, config, tmp_path / "a", 0, checkpoint_every=6, progress=False)
    after = _fixed_loss(loss_fn, straight.params, frozen, batch)
    assert after < before

    # Interrupted after step 6: the step-12 checkpoint is gone, so the run resumes at 6.
    import orbax.checkpoint as ocp

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    manager = ocp.CheckpointManager((tmp_path / "b" / "checkpoints" / "denoiser").absolute())
    manager.delete(12)
    manager.close()
    resumed = train.run_stage("denoiser", functools.partial(train.shapes_batch, model, 0, "denoiser"), loss_fn, trainable, frozen, config, tmp_path / "b", 0, checkpoint_every=6, progress=False)
    assert int(resumed.step) == 12
    for a, b in zip(jax.tree.leaves(straight.ema), jax.tree.leaves(resumed.ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_latent_scale_normalises_the_latents(config_dir):
    model, params = init_model(config_dir)
    scale = train.latent_scale(model, params["vae"], 0, num_images=64)
    from jaxalign.models import with_latent_scale

    scaled = with_latent_scale(model, scale)
    images = jnp.asarray(train.shapes.make_batch(7919, 64).images)
    mean, _ = scaled.encode(params, images)
    assert float(jnp.std(mean)) == pytest.approx(1.0, rel=0.05)


def test_shipped_model_loads_trained_weights(config_dir):
    model, params = load_model("embedded")
    _, fresh = init_model(config_dir)
    assert (EMBEDDED_DIR / "unet" / "diffusion_flax_model.msgpack").is_file()
    assert model.default_size == 32 and len(model.tokenizer) == 49408
    # Trained, not the seeded initialisation.
    assert not np.allclose(np.asarray(params["unet"]["conv_out"]["kernel"]), np.asarray(fresh["unet"]["conv_out"]["kernel"]))
