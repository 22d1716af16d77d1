"""The model module: the embedded default, saving and loading diffusers directories, PyTorch weights."""

import json
import shutil

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


