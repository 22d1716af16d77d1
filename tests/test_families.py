"""Real model layouts: a tiny random PyTorch pipeline of every registered model family (and SD's LCM
variant) saved by diffusers, loaded by jaxalign, and compared with diffusers' own PyTorch pipelines
(float32) from the same initial latents. A family added to FAMILIES is tested here by registering it."""

import json
import re
import shutil
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxalign.cli import main
from jaxalign.errors import JaxalignError
from jaxalign.models import FAMILIES, load_model
from jaxalign.sampler import make_sampler
from jaxalign.schedulers import LCM_NOISE_SEED, RectifiedFlow, lcm_noise
from jaxalign.testing import TINY_VARIANTS as VARIANTS
from jaxalign.testing import fake_hf_cache, tiny_pytorch_pipeline

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
# Tolerances reached on CPU are ~3e-5; the issue asks for 1e-3 on images.
IMAGE_ATOL = 1e-4


LAYOUTS = [*sorted(FAMILIES), *VARIANTS]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    made = {}
    for name in LAYOUTS:
        family, options = VARIANTS.get(name, (name, {}))
        made[name] = (tiny_pytorch_pipeline(family, root / name, seed=len(made), **options), root / name)
    return made


@pytest.fixture(scope="module")
def loaded(pipelines):
    """load_model of each tiny pipeline, once per module (models and params are immutable)."""
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = load_model(str(pipelines[name][1]))
        return cache[name]

    return load


def initial_latents(n=2, seed=0, channels=4):
    return np.random.default_rng(seed).standard_normal((n, channels, 16, 16)).astype(np.float32)


def jax_sample(model, params, scheduler, steps, latents, guidance_scale, negative=""):
    context, uncond = model.conditioning(params, PROMPT, negative)
    sample = jax.jit(make_sampler(model, scheduler, steps, image_tokens=model.image_tokens(latents.shape[1:])).sample)
    return np.asarray(sample(params, jnp.asarray(latents), context, uncond, guidance_scale))


def torch_sample(pipe, latents, steps, guidance_scale, family, **kwargs):
    call = family.reference_call(pipe, latents)
    call["latents"] = torch.tensor(call["latents"])
    with torch.no_grad():
        return pipe(
            [PROMPT] * len(latents), num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np", height=32, width=32, **call, **kwargs,
        ).images  # fmt: skip


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "lcm"])
def test_four_step_sample_matches_diffusers_pytorch(pipelines, loaded, name):
    """The same initial latents through jaxalign and the PyTorch pipeline, each with the model's own scheduler
    (DDIM for the VP families, flow-matching Euler with shift 3 for SD3)."""
    pipe, path = pipelines[name]
    model, params = loaded(name)
    assert model.family is FAMILIES[VARIANTS.get(name, (name,))[0]]
    latents = initial_latents(channels=model.latent_channels)
    # A non-empty negative prompt: SDXL then encodes it (an empty one is zeros, tested below).
    expected = torch_sample(pipe, latents, 4, 5.0, model.family, negative_prompt=["green"] * len(latents))
    ours = jax_sample(model, params, "auto", 4, latents, 5.0, negative="green")
    assert expected.std() > 0.05  # the tiny model draws something, so agreement is informative
    np.testing.assert_allclose(ours, expected, atol=IMAGE_ATOL)


def test_sd_components_match_pytorch(pipelines, loaded):
    pipe, path = pipelines["sd"]
    model, params = loaded("sd")
    ids = model.tokenize([PROMPT])
    with torch.no_grad():
        expected = pipe.text_encoder(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model.encode_tokens(params, jnp.asarray(ids))), expected, atol=1e-5)

    latents, hidden = initial_latents(), np.random.default_rng(1).standard_normal((2, 77, 32)).astype(np.float32)
    with torch.no_grad():
        expected = pipe.unet(torch.tensor(latents), 501, torch.tensor(hidden)).sample.numpy()
    ours = jax.jit(model.predict)(params, jnp.asarray(latents), jnp.float32(501), jnp.asarray(hidden))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4)

    with torch.no_grad():
        decoded = pipe.vae.decode(torch.tensor(latents) / pipe.vae.config.scaling_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(model.decode)(params, jnp.asarray(latents))), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["sd3", "sd35"])
def test_sd3_components_match_pytorch(pipelines, loaded, name):
    """SD3's pieces one by one: T5 alone, one transformer call at a time input between steps (joint attention,
    AdaLN-Zero, the cropped position table; SD 3.5: q/k RMS norms and MMDiT-X blocks), and the decode with the
    autoencoder's shift factor."""
    pipe, path = pipelines[name]
    model, params = loaded(name)
    assert model.family.noise_process is RectifiedFlow and make_sampler(model, "auto", 4).scheduler == "flow_euler"
    ids = model.tokenize([PROMPT])["text_encoder_3"]
    with torch.no_grad():
        expected = pipe.text_encoder_3(torch.tensor(ids, dtype=torch.long))[0].numpy()
    ours = model.text_encoders["text_encoder_3"](jnp.asarray(ids), params=params["text_encoder_3"])[0]
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)

    rng = np.random.default_rng(3)
    latents = initial_latents(channels=16)
    hidden, pooled = rng.standard_normal((2, 77 + 256, 80)).astype(np.float32), rng.standard_normal((2, 64)).astype(np.float32)
    with torch.no_grad():
        expected = pipe.transformer(
            hidden_states=torch.tensor(latents), encoder_hidden_states=torch.tensor(hidden), pooled_projections=torch.tensor(pooled),
            timestep=torch.tensor([433.5, 433.5]),
        ).sample.numpy()  # fmt: skip
    ours = jax.jit(model.predict)(params, jnp.asarray(latents), jnp.float32(433.5), {"hidden_states": jnp.asarray(hidden), "pooled": jnp.asarray(pooled)})
    assert expected.std() > 0.1
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)

    assert model.autoencoder.shift_factor == 0.1 and "quant_conv" not in params["vae"]
    with torch.no_grad():
        decoded = pipe.vae.decode(torch.tensor(latents) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(model.decode)(params, jnp.asarray(latents))), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["sd", "sdxl", "lcm"])
def test_fused_attention_matches_the_flax_unets_attention(pipelines, loaded, name):
    """attention="fused" (jax.nn.dot_product_attention on the UNet's own projections) gives the same samples as
    diffusers' Flax attention; the transformers use that function from the start (their parity is above)."""
    model, params = loaded(name)
    latents = initial_latents()
    fused = model.with_attention("fused")
    assert fused.network.attention == "fused" and fused.with_attention("fused") is fused
    np.testing.assert_allclose(jax_sample(fused, params, "auto", 3, latents, 5.0), jax_sample(model, params, "auto", 3, latents, 5.0), atol=1e-5)


@pytest.mark.parametrize("name", ["flux", "flux_schnell"])
def test_flux_transformer_matches_pytorch_on_packed_latents(pipelines, loaded, name):
    """One Flux transformer call (2x2 packing inside, rotary ids, double and single blocks, dev's guidance
    embedding) against diffusers' on the pipeline's packed latents and ids; the model's own guidance mode."""
    from diffusers import FluxPipeline

    from jaxalign.models.flux import pack

    pipe, path = pipelines[name]
    model, params = loaded(name)
    assert model.guidance == ("none" if name == "flux_schnell" else "embedded")
    rng = np.random.default_rng(4)
    latents = initial_latents(channels=16)
    hidden, pooled = rng.standard_normal((2, 7, 80)).astype(np.float32), rng.standard_normal((2, 32)).astype(np.float32)
    guidance = {} if name == "flux_schnell" else {"guidance": torch.tensor([3.5, 3.5])}
    with torch.no_grad():
        expected = pipe.transformer(
            hidden_states=torch.tensor(np.asarray(pack(latents))), encoder_hidden_states=torch.tensor(hidden), pooled_projections=torch.tensor(pooled),
            timestep=torch.tensor([0.4335, 0.4335]), img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32),
            txt_ids=torch.zeros(7, 3), **guidance,
        ).sample.numpy()  # fmt: skip
    ours = model.predict(params, jnp.asarray(latents), jnp.float32(433.5), {"hidden_states": jnp.asarray(hidden), "pooled": jnp.asarray(pooled)}, guidance_scale=3.5)
    assert expected.std() > 0.1
    np.testing.assert_allclose(np.asarray(pack(ours)), expected, atol=2e-5)
    if name == "flux":  # the guidance scale reaches the transformer
        other = model.predict(params, jnp.asarray(latents), jnp.float32(433.5), {"hidden_states": jnp.asarray(hidden), "pooled": jnp.asarray(pooled)}, guidance_scale=1.0)
        assert float(jnp.abs(other - ours).max()) > 1e-3


def test_flux_true_cfg_matches_the_pipeline(pipelines, loaded):
    """FluxPipeline's "true" CFG: a negative-prompt pass per step beside the embedded guidance, combined with
    true_cfg_scale; the same samples as the pipeline's, and different from the one-pass ones."""
    pipe, _ = pipelines["flux"]
    model, params = loaded("flux")
    latents = initial_latents(channels=16)
    expected = torch_sample(pipe, latents, 3, 3.5, model.family, negative_prompt=["green"] * 2, true_cfg_scale=2.0)
    context, uncond = model.conditioning(params, PROMPT, "green")
    sampler = make_sampler(model, "auto", 3, image_tokens=model.image_tokens(latents.shape[1:]), true_cfg_scale=2.0)
    ours = np.asarray(jax.jit(sampler.sample)(params, jnp.asarray(latents), context, uncond, 3.5))
    np.testing.assert_allclose(ours, expected, atol=IMAGE_ATOL)
    assert np.abs(ours - jax_sample(model, params, "auto", 3, latents, 3.5, negative="green")).max() > 1e-3
    with pytest.raises(JaxalignError, match="true_cfg_scale applies to models that embed the guidance scale or take none"):
        make_sampler(loaded("sd")[0], "auto", 3, true_cfg_scale=2.0)


def test_pixart_transformer_with_resolution_conditioning_matches_pytorch(tmp_path):
    """PixArt-α's 1024² layout conditions on the image's resolution and aspect ratio (use_additional_conditions;
    diffusers' pipelines pass them only at sample size 128, so this is one transformer call): non-square latents,
    padded captions with their mask, learned sigma dropped."""
    pipe = tiny_pytorch_pipeline("pixart_alpha", tmp_path / "model", seed=9, additional_conditions=True)
    model, params = load_model(str(tmp_path / "model"))
    assert model.network.module.use_additional_conditions
    rng = np.random.default_rng(5)
    latents, hidden = rng.standard_normal((2, 4, 16, 24)).astype(np.float32), rng.standard_normal((2, 7, 80)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]], np.int32)
    conditions = {"resolution": torch.tensor([[32.0, 48.0]] * 2), "aspect_ratio": torch.tensor([[32 / 48]] * 2)}
    with torch.no_grad():
        expected = pipe.transformer(
            torch.tensor(latents), encoder_hidden_states=torch.tensor(hidden), encoder_attention_mask=torch.tensor(mask), timestep=torch.tensor([301, 301]),
            added_cond_kwargs=conditions,
        ).sample.numpy()  # fmt: skip
    inputs = {"hidden_states": jnp.asarray(hidden), "mask": jnp.asarray(mask)}
    ours = model.predict(params, jnp.asarray(latents), jnp.float32(301), inputs)
    assert expected.shape[1] == 8 and ours.shape[1] == 4 and expected[:, :4].std() > 0.1
    np.testing.assert_allclose(np.asarray(ours), expected[:, :4], atol=2e-5)
    # The resolution reaches the output, and so does the mask.
    square = model.predict(params, jnp.asarray(latents[..., :16]), jnp.float32(301), inputs)
    with torch.no_grad():
        conditions = {"resolution": torch.tensor([[32.0, 32.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
        kwargs = dict(encoder_hidden_states=torch.tensor(hidden), encoder_attention_mask=torch.tensor(mask), timestep=torch.tensor([301, 301]), added_cond_kwargs=conditions)
        expected_square = pipe.transformer(torch.tensor(latents[..., :16]), **kwargs).sample.numpy()
    np.testing.assert_allclose(np.asarray(square), expected_square[:, :4], atol=2e-5)
    unmasked = model.predict(params, jnp.asarray(latents), jnp.float32(301), {**inputs, "mask": jnp.ones_like(inputs["mask"])})
    assert float(jnp.abs(unmasked - ours).max()) > 1e-3


@pytest.mark.parametrize("name", ["pixart_alpha", "pixart_sigma"])
def test_pixart_prompts_are_lowercased_and_stripped_as_the_pipelines(pipelines, loaded, name):
    """The pipelines' text preprocessing without caption cleaning; T5's tokenizer (like the tiny one here) is
    case-sensitive, so skipping it would encode other tokens."""
    pipe, _ = pipelines[name]
    model, params = loaded(name)
    prompt = "  A Red Circle ON a blue background "
    assert 2 in pipe.tokenizer(prompt).input_ids  # capitalised words are unknown to the case-sensitive vocabulary
    ours = model.conditioning(params, prompt, " Green")
    expected = model.family.reference_conditioning(pipe, prompt, " Green")
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, atol=3e-5)
    assert int(ours[0]["mask"].sum()) == 8 and len(ours[0]["mask"]) == model.family.max_sequence_length  # 7 words and the end token


def test_guidance_at_most_one_samples_the_conditional_prediction_as_the_pipelines(pipelines, loaded):
    """diffusers' pipelines guide only when guidance_scale > 1 (the reference's PixArt-LCM config uses 0): the
    conditional prediction alone, not the unconditional one that uncond + 0 (cond - uncond) would give."""
    pipe, _ = pipelines["pixart_sigma"]
    model, params = loaded("pixart_sigma")
    latents = initial_latents()
    expected = torch_sample(pipe, latents, 3, 0.0, model.family, negative_prompt=["green"] * 2)
    for scale in (0.0, 1.0):
        np.testing.assert_allclose(jax_sample(model, params, "auto", 3, latents, scale, negative="green"), expected, atol=IMAGE_ATOL)
    assert np.abs(jax_sample(model, params, "auto", 3, latents, 1.5, negative="green") - expected).max() > 1e-3


def test_sd3_options_jaxalign_does_not_implement_are_refused(pipelines, tmp_path):
    _, sd3 = pipelines["sd3"]
    odd = tmp_path / "odd"
    shutil.copytree(sd3, odd)
    config = json.loads((odd / "transformer" / "config.json").read_text())
    (odd / "transformer" / "config.json").write_text(json.dumps({**config, "qk_norm": "layer_norm"}))
    with pytest.raises(JaxalignError, match=r"transformer/config.json: qk_norm='layer_norm' is not supported"):
        load_model(str(odd))
    model, _ = load_model(str(sd3))
    with pytest.raises(JaxalignError, match=r"multiples of 4 .* got 30x30"):  # autoencoder 2 x patch 2
        model.latent_shape(30, 30)
    with pytest.raises(JaxalignError, match=r"at most 48 .* position table"):  # pos_embed_max_size 12 x patch 2 x autoencoder 2
        model.latent_shape(64, 64)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"norm_type": "ada_norm_zero"}, r"transformer/config.json: norm_type='ada_norm_zero' is not supported \(jaxalign implements PixArt's norm_type='ada_norm_single'\)"),
        ({"norm_elementwise_affine": True}, r"norm_elementwise_affine=True is not supported"),
        ({"use_additional_conditions": True, "attention_head_dim": 8, "cross_attention_dim": 16}, r"use_additional_conditions needs .* divisible by 3 .* got 16"),
    ],
)
def test_pixart_options_jaxalign_does_not_implement_are_refused_by_the_cli(pipelines, tmp_path, capsys, change, message):
    _, sigma = pipelines["pixart_sigma"]
    odd = tmp_path / "odd"
    shutil.copytree(sigma, odd)
    config = json.loads((odd / "transformer" / "config.json").read_text())
    (odd / "transformer" / "config.json").write_text(json.dumps({**config, **change}))
    argv = ["run", "--config", str(ROOT / "configs" / "default.py"), f"--config.model={odd}", "--workdir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2 and not (tmp_path / "run").exists()
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error


@pytest.mark.parametrize("negative", ["", "green"])
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "lcm"])
def test_conditioning_matches_the_pipelines_prompt_encoding(pipelines, loaded, name, negative):
    # Covers each family's tokenize, encode and unconditional branch (SDXL: an empty negative prompt is zeros).
    pipe, path = pipelines[name]
    model, params = loaded(name)
    ours = model.conditioning(params, PROMPT, negative)
    with torch.no_grad():
        expected = model.family.reference_conditioning(pipe, PROMPT, negative)
    assert jax.tree.structure(ours) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, atol=3e-5)  # T5 over 512 tokens: ~1e-5 of float32 rounding
    assert np.asarray(jax.tree.leaves(ours[0])[0]).std() > 0.1  # the prompt's encoding is not trivially zero


def test_lcm_sample_matches_diffusers_with_the_same_injected_noise(pipelines, loaded):
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm

    pipe, path = pipelines["lcm"]
    model, params = loaded("lcm")
    assert model.guidance == "embedded" and model.network.guidance_embedding_dim == 8
    latents = initial_latents()
    key = jax.random.key(LCM_NOISE_SEED)
    noises = iter([np.broadcast_to(np.asarray(lcm_noise(key, i, latents.shape[1:])), latents.shape).copy() for i in range(4)])
    with mock.patch.object(scheduling_lcm, "randn_tensor", lambda *args, **kwargs: torch.tensor(next(noises))):
        expected = torch_sample(pipe, latents, 4, 6.0, model.family)
    np.testing.assert_allclose(jax_sample(model, params, "lcm", 4, latents, 6.0), expected, atol=IMAGE_ATOL)
    # The guidance scale reaches the UNet only through its embedding: it must change the image.
    assert np.abs(jax_sample(model, params, "lcm", 4, latents, 2.0) - jax_sample(model, params, "lcm", 4, latents, 6.0)).max() > 1e-3


def test_pixart_lcm_sample_matches_the_alpha_pipeline_at_guidance_zero(tmp_path):
    """PixArt-LCM (the reference's pixart-alpha.yaml): a PixArt-α transformer with LCMScheduler, sampled through
    scheduler="auto" at guidance 0, the pipeline's injected noise given as jaxalign draws it."""
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm

    lcm = {
        "_class_name": "LCMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000,
        "original_inference_steps": 50, "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 0, "timestep_scaling": 10.0,
        "timestep_spacing": "leading", "clip_sample": False,
    }  # fmt: skip
    pipe = tiny_pytorch_pipeline("pixart_alpha", tmp_path / "model", seed=11, scheduler=lcm)
    model, params = load_model(str(tmp_path / "model"))
    latents = initial_latents()
    key = jax.random.key(LCM_NOISE_SEED)
    noises = iter([np.broadcast_to(np.asarray(lcm_noise(key, i, latents.shape[1:])), latents.shape).copy() for i in range(4)])
    with mock.patch.object(scheduling_lcm, "randn_tensor", lambda *args, **kwargs: torch.tensor(next(noises))):
        expected = torch_sample(pipe, latents, 4, 0.0, model.family)
    ours = jax_sample(model, params, "auto", 4, latents, 0.0)
    assert expected.std() > 0.05
    np.testing.assert_allclose(ours, expected, atol=IMAGE_ATOL)


def test_bfloat16_load_of_pytorch_weights(pipelines, loaded):
    _, path = pipelines["sdxl"]
    model, params = load_model(str(path), dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    reference, reference_params = loaded("sdxl")
    latents = jnp.asarray(initial_latents(1))
    decoded, expected = model.decode(params, latents), reference.decode(reference_params, latents)
    assert decoded.dtype == jnp.float32 and 0 < float(jnp.abs(decoded - expected).max()) < 0.05


def test_hub_repo_id_resolves_from_the_local_cache_offline(pipelines, loaded, tmp_path, monkeypatch):
    _, path = pipelines["sd"]
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "someone/tiny-sd", path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, params = load_model("someone/tiny-sd")
    reference, reference_params = loaded("sd")
    assert model.name == "someone/tiny-sd"
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)))
    with pytest.raises(JaxalignError, match=r"'someone/absent' is not in the local Hugging Face cache \(looked in .*models--someone--absent\)"):
        load_model("someone/absent")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_wrong_family_and_partial_directory_are_clear_errors(pipelines, name, tmp_path):
    _, path = pipelines[name]
    for other in set(FAMILIES) - {name}:
        with pytest.raises(JaxalignError, match=rf"expects '{other}' .* holds a '{name}' model"):
            load_model(str(path), family=other)
    for component in FAMILIES[name].directories:
        partial = tmp_path / component
        shutil.copytree(path, partial)
        shutil.rmtree(partial / component)
        with pytest.raises(JaxalignError, match=rf"lacks {component}/ .*'{name}'"):
            load_model(str(partial))


def test_unsupported_unet_is_a_clear_error(pipelines, tmp_path):
    _, sd = pipelines["sd"]
    odd = tmp_path / "odd"
    shutil.copytree(sd, odd)
    config = json.loads((odd / "unet" / "config.json").read_text())
    (odd / "unet" / "config.json").write_text(json.dumps({**config, "norm_num_groups": 8}))
    with pytest.raises(JaxalignError, match=r"norm_num_groups=8 is not supported"):
        load_model(str(odd))


def test_checkpoint_with_unexpected_keys_is_a_clear_error(pipelines, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, sd = pipelines["sd"]
    broken = tmp_path / "broken"
    shutil.copytree(sd, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.extra_layer.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, weights)
    with pytest.raises(JaxalignError, match=r"1 unexpected \(e.g. \['decoder/extra_layer/kernel'\]\)"):
        load_model(str(broken))


def test_cli_runs_the_sd15_config_on_a_tiny_pytorch_directory(pipelines, tmp_path, capsys):
    _, path = pipelines["sd"]
    workdir = tmp_path / "run"
    argv = [
        "run", "--config", str(ROOT / "configs" / "sd15.py"), f"--config.model={path}", "--workdir", str(workdir),
        "--no-progress", "--config.height=32", "--config.width=32", "--config.num_inference_steps=2",
        "--config.popsize=4", "--config.steps=2", "--config.rewards={'brightness': 1.0}",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[-1]["best_fitness"] >= lines[0]["best_fitness"]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == str(path)

    capsys.readouterr()
    wrong = [*argv[:3], f"--config.model={pipelines['sdxl'][1]}", "--workdir", str(tmp_path / "other"), *argv[6:]]
    assert main(wrong) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "expects 'sd'" in error


@pytest.mark.parametrize("name", LAYOUTS)
def test_converted_models_save_as_flax_and_load_back(loaded, tmp_path, name):
    from jaxalign.models import save_model

    model, params = loaded(name)
    save_model(model, params, tmp_path / "flax")
    again, again_params = load_model(str(tmp_path / "flax"))
    assert (again.family, again.family_options, again.guidance, again.scheduler_config) == (model.family, model.family_options, model.guidance, model.scheduler_config)
    assert jax.tree.structure(again_params) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again_params)))
    for a, b in zip(jax.tree.leaves(again.tokenize([PROMPT])), jax.tree.leaves(model.tokenize([PROMPT]))):
        np.testing.assert_array_equal(a, b)
