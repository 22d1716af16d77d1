"""The model module: the embedded default, saving and loading diffusers directories, PyTorch weights."""

import json
import shutil
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.models import load_model, save_model


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_embedded_loads_the_same_shipped_weights(embedded):
    model, params = embedded
    _, again = load_model("embedded")
    assert all(np.array_equal(a, b) for a, b in zip(leaves(params), leaves(again)))
    assert model.latent_shape(32, 32) == (4, 8, 8)
    assert model.default_size == 32


def test_embedded_tokenizer_is_stable_diffusions_clip_bpe(embedded):
    model, _ = embedded
    ids = model.tokenize(["a red circle", ""])
    assert ids.shape == (2, 77)
    bos, eos = 49406, 49407
    # The ids of CLIP's vocabulary ("a</w>" 320, "red</w>" 736, "circle</w>" 7117), padded with the end token.
    assert list(ids[0, :5]) == [bos, 320, 736, 7117, eos] and (ids[0, 5:] == eos).all()
    assert model.tokenizer.decode(ids[0], skip_special_tokens=True) == "a red circle"
    assert list(ids[1, :2]) == [bos, eos]


def test_bfloat16_casts_weights_and_keeps_float32_outputs():
    model, params = load_model("embedded", dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    images = model.decode(params, jnp.zeros((1, 4, 8, 8)))
    assert images.dtype == jnp.float32 and images.shape == (1, 32, 32, 3)


def test_save_and_load_roundtrip(embedded, tmp_path):
    model, params = embedded
    save_model(model, params, tmp_path / "sd")
    loaded, loaded_params = load_model(str(tmp_path / "sd"))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(params), leaves(loaded_params)))
    prompts = ["a blue square", ""]
    np.testing.assert_array_equal(loaded.tokenize(prompts), model.tokenize(prompts))
    np.testing.assert_allclose(
        np.asarray(loaded.encode_prompts(loaded_params, prompts)), np.asarray(model.encode_prompts(params, prompts)), atol=1e-6
    )


def test_missing_and_partial_directories_are_clear_errors(embedded, tmp_path):
    with pytest.raises(JaxalignError, match="model directory not found: .*nowhere"):
        load_model(str(tmp_path / "nowhere"))
    model, params = embedded
    save_model(model, params, tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "vae")
    with pytest.raises(JaxalignError, match="lacks vae/"):
        load_model(str(tmp_path / "sd"))


def test_weights_that_do_not_fit_the_config_are_a_clear_error(embedded, tmp_path):
    model, params = embedded
    save_model(model, params, tmp_path / "sd")
    config_path = tmp_path / "sd" / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(JaxalignError, match=r"has shape \(32, .*expects \(48, "):
        load_model(str(tmp_path / "sd"))




def test_seeded_init_draws_on_the_device_by_the_host_rules():
    """Random weights drawn on the device (large benchmark models) follow the host draw's rules, leaf by leaf:
    LeCun-normal kernels, 0.02 embeddings, unit scales, zero biases; deterministic per seed and name."""
    from jaxalign.models import seeded_init

    shapes = {"dense": {"kernel": jax.ShapeDtypeStruct((256, 512), jnp.float32), "bias": jax.ShapeDtypeStruct((512,), jnp.float32)},
              "embed": {"embedding": jax.ShapeDtypeStruct((300, 400), jnp.float32)}, "norm": {"scale": jax.ShapeDtypeStruct((64,), jnp.float32)}}  # fmt: skip
    host = seeded_init(shapes, seed=3)
    device = seeded_init(shapes, seed=3, device_dtype=jnp.bfloat16)
    again = seeded_init({"norm": shapes["norm"], "embed": shapes["embed"], "dense": shapes["dense"]}, seed=3, device_dtype=jnp.bfloat16)
    other_seed = seeded_init(shapes, seed=4, device_dtype=jnp.bfloat16)
    for tree in host, device:
        kernel, embedding = (np.asarray(tree[a][b], np.float32) for a, b in (("dense", "kernel"), ("embed", "embedding")))
        assert abs(kernel.std() * np.sqrt(256) - 1) < 0.02 and abs(kernel.mean()) < 0.005
        assert abs(embedding.std() / 0.02 - 1) < 0.02
        assert np.all(np.asarray(tree["dense"]["bias"]) == 0) and np.all(np.asarray(tree["norm"]["scale"]) == 1)
    assert all(leaf.dtype == jnp.bfloat16 and isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(device))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), device, again))
    assert not np.array_equal(np.asarray(device["dense"]["kernel"], np.float32), np.asarray(other_seed["dense"]["kernel"], np.float32))
    # The host draw is the one trained models started from: NumPy's generator keyed by (seed, crc32 of the leaf's path).
    expected = np.random.default_rng([3, zlib.crc32(b"['dense']['kernel']")]).standard_normal((256, 512), dtype=np.float32) / np.sqrt(256)
    np.testing.assert_array_equal(host["dense"]["kernel"], expected.astype(np.float32))
