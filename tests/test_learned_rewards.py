"""Learned rewards (CLIP score, PickScore, aesthetic, HPSv2) against transformers' PyTorch CLIP on the
same tiny random weights, their JAX preprocessing against CLIP's image processor, and host-callback
rewards."""

import json
import math
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import small_config

from jaxalign.errors import JaxalignError
from jaxalign.models import EMBEDDED_DIR
from jaxalign.learned_rewards import clip_preprocess
from jaxalign.rewards import host_reward, parse_reward
from jaxalign.run import build, run

PROMPTS = ["a red circle on a blue background", "a green square"]
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_config(projection_dim=16):
    from transformers import CLIPConfig

    tokens = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    return CLIPConfig(
        projection_dim=projection_dim, logit_scale_init_value=math.log(40.0),
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, hidden_act="gelu", **tokens),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8, hidden_act="gelu"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random transformers CLIPModel saved with safetensors and no tokenizer files (CLIP's BPE
    tokenizer is the fallback), with non-trivial norms and biases."""
    from transformers import CLIPModel

    from jaxalign.testing import perturb_norms_and_biases

    torch.manual_seed(0)
    model = perturb_norms_and_biases(CLIPModel(tiny_clip_config()), seed=5)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def images(n=3, size=(48, 40), seed=0):
    base = jax.random.uniform(jax.random.key(seed), (n, 6, 6, 3))
    return jax.image.resize(base, (n, *size, 3), "linear")


def torch_scores(model, pixels, prompt):
    """Reference: transformers' PyTorch CLIP on the same pixels: (cosine [N], logit scale)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer")  # CLIP's BPE, the tiny model's fallback
    ids = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2))
        text = model.get_text_features(input_ids=ids)
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return (image @ text.T)[:, 0].numpy(), float(model.logit_scale.detach().exp())


def test_clip_preprocessing_matches_clip_image_processor_to_one_8bit_level():
    from transformers import CLIPImageProcessor

    for height, width, crop in ((64, 80, 32), (96, 64, 32), (256, 256, 224)):
        pixels = np.clip(np.round(np.asarray(images(2, (height, width))) * 255), 0, 255).astype(np.uint8)
        processor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
        expected = processor(images=list(pixels), return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
        ours = np.asarray(clip_preprocess(jnp.asarray(pixels / 255.0, jnp.float32), crop, processor.image_mean, processor.image_std))
        # PIL resizes uint8 images and rounds the result: one 8-bit level is 1 / 255 / 0.26 = 0.015 here.
        np.testing.assert_allclose(ours, expected, atol=0.02)
        assert np.abs(ours - expected).mean() < 0.006


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_clip_and_pickscore_match_transformers_pytorch(tiny_clip, name):
    model, path = tiny_clip
    reward = parse_reward(name, {name: str(path)})
    batch = images()
    ours = np.asarray(reward.score(batch, reward.params, reward.prepare(PROMPTS[0])))
    cosine, logit_scale = torch_scores(model, clip_preprocess(batch, 32, CLIP_MEAN, CLIP_STD), PROMPTS[0])
    expected = cosine * (100.0 if name == "clip" else logit_scale)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    assert np.ptp(expected) > 1e-3  # images are told apart
    other = np.asarray(reward.score(batch, reward.params, reward.prepare(PROMPTS[1])))
    assert np.abs(other - ours).max() > 1e-3  # and the prompt matters


class AestheticMLP(torch.nn.Module):
    """The LAION improved-aesthetic-predictor's MLP layout (``layers.<i>``), scaled down."""

    def __init__(self, dim):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 24), torch.nn.Dropout(0.2), torch.nn.Linear(24, 12), torch.nn.Dropout(0.2),
            torch.nn.Linear(12, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1),
        )  # fmt: skip

    def forward(self, x):
        return self.layers(x)


def test_aesthetic_matches_its_pytorch_mlp_on_normalised_clip_embeddings(tiny_clip, tmp_path):
    model, path = tiny_clip
    torch.manual_seed(1)
    mlp = AestheticMLP(16).eval()
    torch.save(mlp.state_dict(), tmp_path / "predictor.pth")
    reward = parse_reward("aesthetic", {"aesthetic": {"path": str(tmp_path / "predictor.pth"), "clip": str(path)}})
    batch = images()
    pixels = clip_preprocess(batch, 32, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        embedding = model.get_image_features(pixel_values=torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2))
        expected = mlp(embedding / embedding.norm(dim=-1, keepdim=True))[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(reward.score(batch, reward.params)), expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(expected) > 1e-4

    torch.save(AestheticMLP(12).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(JaxalignError, match=r"layers.0.weight has shape \(24, 12\), expected \(\*, 16\)"):
        parse_reward("aesthetic", {"aesthetic": {"path": str(tmp_path / "wrong.pth"), "clip": str(path)}})


def test_reference_aesthetic_is_the_reference_evolution_path_uint8_quirk(tiny_clip, tmp_path):
    """diffusion-trajectory's evolution runs give CLIP's processor PIL images with do_rescale=False (0-255 values
    normalised as if 0-1) and feed the MLP the raw embedding: the preprocessing against that processor call to one
    8-bit level, the score against PyTorch on those pixels, and both apart from the predictor's own `aesthetic`."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from jaxalign.learned_rewards import uint8_clip_preprocess

    model, path = tiny_clip
    batch = images()
    levels = np.clip(np.round(np.asarray(batch) * 255), 0, 255).astype(np.uint8)  # diffusers' numpy_to_pil
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected_pixels = processor(images=[Image.fromarray(x) for x in levels], do_rescale=False, return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
    pixels = np.asarray(uint8_clip_preprocess(batch, 32, processor.image_mean, processor.image_std))
    level = 1 / min(processor.image_std)  # one 8-bit level in these units
    assert np.abs(pixels - expected_pixels).max() <= level + 1e-3 and np.abs(pixels - expected_pixels).mean() < 0.3 * level
    assert expected_pixels.max() > 100  # the quirk: values far outside CLIP's normalised range

    torch.manual_seed(1)
    mlp = AestheticMLP(16).eval()
    torch.save(mlp.state_dict(), tmp_path / "predictor.pth")
    options = {"path": str(tmp_path / "predictor.pth"), "clip": str(path)}
    reward = parse_reward("reference_aesthetic", {"reference_aesthetic": options})
    with torch.no_grad():
        embedding = model.get_image_features(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2))
        expected = mlp(embedding)[:, 0].numpy()  # no L2 normalisation, as the reference
    np.testing.assert_allclose(np.asarray(reward.score(batch, reward.params)), expected, rtol=1e-4, atol=1e-4)
    assert not reward.differentiable
    intended = np.asarray(parse_reward("aesthetic", {"aesthetic": options}).score(batch, reward.params))
    assert np.abs(intended - expected).max() > 1e-3


def to_open_clip(state):
    """transformers CLIPModel state dict -> open_clip's layout (the inverse of jaxalign's mapping),
    written independently here from open_clip's module names."""
    out = {}
    blocks = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        layers = {int(k.split(".")[3]) for k in state if k.startswith(f"{tower}.encoder.layers.")}
        for i in layers:
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for hf, oc in blocks.items():
                for leaf in ("weight", "bias"):
                    out[f"{dst}{oc}.{leaf}"] = state[f"{src}{hf}.{leaf}"]
            for leaf in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([state[f"{src}self_attn.{x}_proj.{leaf}"] for x in "qkv"])
    out["token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = state["text_model.final_layer_norm.weight"], state["text_model.final_layer_norm.bias"]
    out["text_projection"] = state["text_projection.weight"].T.contiguous()
    out["visual.class_embedding"] = state["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = state["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = state["vision_model.embeddings.position_embedding.weight"]
    for leaf in ("weight", "bias"):
        out[f"visual.ln_pre.{leaf}"] = state[f"vision_model.pre_layrnorm.{leaf}"]
        out[f"visual.ln_post.{leaf}"] = state[f"vision_model.post_layernorm.{leaf}"]
    out["visual.proj"] = state["visual_projection.weight"].T.contiguous()
    out["logit_scale"] = state["logit_scale"]
    return {f"module.{k}": v.clone() for k, v in out.items()}  # HPSv2 saved a DataParallel model


def test_hpsv2_open_clip_checkpoint_matches_transformers_pytorch(tiny_clip, tmp_path):
    model, path = tiny_clip
    state = to_open_clip(model.state_dict())
    # open_clip's fused attention is torch.nn.MultiheadAttention: its in_proj layout must give the
    # same attention as transformers' separate q/k/v projections.
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    attention.load_state_dict({
        "in_proj_weight": state["module.visual.transformer.resblocks.0.attn.in_proj_weight"],
        "in_proj_bias": state["module.visual.transformer.resblocks.0.attn.in_proj_bias"],
        "out_proj.weight": state["module.visual.transformer.resblocks.0.attn.out_proj.weight"],
        "out_proj.bias": state["module.visual.transformer.resblocks.0.attn.out_proj.bias"],
    })  # fmt: skip
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        np.testing.assert_allclose(
            attention(x, x, x, need_weights=False)[0].numpy(), model.vision_model.encoder.layers[0].self_attn(x)[0].numpy(), atol=1e-5
        )
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "HPS_v2_compressed.pt")
    architecture = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8, "mlp_ratio": 37 / 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 37 / 32},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(architecture))
    reward = parse_reward("hpsv2", {"hpsv2": str(tmp_path / "HPS_v2_compressed.pt")})
    batch = images()
    cosine, _ = torch_scores(model, clip_preprocess(batch, 32, CLIP_MEAN, CLIP_STD), PROMPTS[0])
    np.testing.assert_allclose(np.asarray(reward.score(batch, reward.params, reward.prepare(PROMPTS[0]))), cosine, atol=1e-5)


def test_learned_rewards_are_differentiable(tiny_clip):
    _, path = tiny_clip
    reward = parse_reward("clip", {"clip": str(path)})
    text = reward.prepare(PROMPTS[0])
    grad = jax.grad(lambda x: reward.score(x, reward.params, text).sum())(images())
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_missing_reward_weights_are_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(JaxalignError, match=r"reward 'hpsv2' needs its checkpoint: set --config.reward_paths.hpsv2"):
        parse_reward("hpsv2")
    with pytest.raises(JaxalignError, match=r"open_clip checkpoint not found: .*nothing.pt"):
        parse_reward("hpsv2", {"hpsv2": str(tmp_path / "nothing.pt")})
    with pytest.raises(JaxalignError, match=r"CLIP model not found: .*no-clip"):
        parse_reward("clip", {"clip": str(tmp_path / "no-clip")})
    with pytest.raises(JaxalignError, match=r"weights file not found: .*absent.pth"):
        parse_reward("aesthetic", {"aesthetic": {"path": str(tmp_path / "absent.pth"), "clip": str(tiny_clip[1])}})
    with pytest.raises(JaxalignError, match=r"unknown reward_paths.clip option\(s\) mlp"):
        parse_reward("clip", {"clip": {"path": str(tiny_clip[1]), "mlp": "x"}})
    with pytest.raises(JaxalignError, match=r"reward 'imagereward' needs the image-reward package"):
        parse_reward("imagereward", {"imagereward": str(tmp_path / "ImageReward.pt")})


def test_host_reward_scores_the_whole_population_in_one_call_with_its_prompt():
    calls = []

    def scorer(batch, prompts):  # a PyTorch scorer: mean red minus the prompt's length / 100
        calls.append((batch.shape, list(prompts)))
        return torch.tensor(batch[..., 0].mean(axis=(1, 2))) - torch.tensor([len(p) / 100 for p in prompts])

    reward = host_reward(scorer, with_prompt=True)
    batch = images(4, (8, 8))
    first, second = reward.prepare(PROMPTS[0]), reward.prepare(PROMPTS[1])
    both = jax.jit(jax.vmap(lambda prepared: reward.score(batch, None, prepared)))(jnp.stack([first, second]))
    red = np.asarray(batch[..., 0].mean(axis=(1, 2)))
    np.testing.assert_allclose(np.asarray(both), np.stack([red - len(p) / 100 for p in PROMPTS]), atol=1e-6)
    assert len(calls) == 1 and calls[0][0] == (8, 8, 8, 3) and calls[0][1] == [PROMPTS[0]] * 4 + [PROMPTS[1]] * 4


def test_a_black_box_reward_is_called_once_per_generation_in_a_search(embedded, tmp_path):
    from jaxalign import rewards

    job = build(small_config(rewards={"jpeg_compressibility": 1.0}, steps=3), embedded)
    with mock.patch.object(rewards, "jpeg_size_kb", wraps=rewards.jpeg_size_kb) as sizes:
        (summary,) = run(job, tmp_path, progress=False)
    assert sizes.call_count == 4  # generation 0 and 3 generations, each scoring all 6 members at once
    assert all(call.args[0].shape == (6, 32, 32, 3) for call in sizes.call_args_list)
    assert summary["best_fitness"] >= summary["baseline_fitness"]


def test_search_with_a_prompt_conditioned_learned_reward(embedded, tiny_clip, tmp_path):
    from PIL import Image

    _, path = tiny_clip
    config = small_config(prompts=PROMPTS, rewards={"clip": 1.0}, reward_paths={"clip": str(path)}, batch_prompts=True, steps=2)
    summaries = run(build(config, embedded), tmp_path, progress=False)
    reward = parse_reward("clip", {"clip": str(path)})
    folders = sorted(tmp_path.glob("00*_*"))
    assert len(folders) == 2
    rescored = {}
    for summary, prompt, folder in zip(summaries, PROMPTS, folders):
        assert summary["prompt"] == prompt and summary["best_fitness"] >= summary["baseline_fitness"]
        baseline = jnp.asarray(np.asarray(Image.open(folder / "images" / "baseline.png"), np.float32) / 255.0)[None]
        for text in PROMPTS:
            rescored[prompt, text] = float(reward.score(baseline, reward.params, reward.prepare(text))[0])
        # The logged baseline is the saved baseline image's score under this prompt's own text (8-bit PNG).
        assert rescored[prompt, prompt] == pytest.approx(summary["baseline_fitness"], abs=0.3)
    # ... and not under the other prompt's text: each prompt of the batch was scored with its own.
    assert any(abs(rescored[p, q] - s["baseline_fitness"]) > 0.3 for s, p in zip(summaries, PROMPTS) for q in PROMPTS if q != p)


def test_learned_reward_weights_are_the_steps_own_argument(embedded, tiny_clip):
    """The step scores with the reward weights it is given, beside (not inside) the model's: other weights, other
    scores; the model's own weights are the loaded model's, untouched."""
    from jaxalign.run import make_problem

    _, path = tiny_clip
    job = build(small_config(rewards={"clip": 1.0}, reward_paths={"clip": str(path)}), embedded)
    assert jax.tree.structure(job.model_params) == jax.tree.structure(embedded[1])
    reward = parse_reward("clip", {"clip": str(path)})
    assert jax.tree.structure(job.reward_params) == jax.tree.structure({"clip": reward.params})
    problem, key = make_problem(job, PROMPTS[0], 0)
    state = job.search.init(key, problem, job.search_params)
    _, report = job.search.start(job.model_params, job.reward_params, problem, job.search_params, state)
    images = report.images
    expected = reward.score(images, reward.params, reward.prepare(PROMPTS[0]))
    np.testing.assert_allclose(np.asarray(report.fitness), np.asarray(expected), rtol=1e-4, atol=1e-4)
    scaled = jax.tree.map(lambda x: 0.5 * x if x.ndim == 2 else x, job.reward_params)  # other weights, same shapes
    _, other = job.search.start(job.model_params, scaled, problem, job.search_params, state)
    np.testing.assert_array_equal(np.asarray(other.images), np.asarray(images))  # the same images ...
    rescored = reward.score(images, scaled["clip"], reward.prepare(PROMPTS[0]))
    np.testing.assert_allclose(np.asarray(other.fitness), np.asarray(rescored), rtol=1e-4, atol=1e-4)  # ... scored by them
    assert not np.allclose(np.asarray(other.fitness), np.asarray(report.fitness), atol=1e-3)


def test_imagereward_glue_with_a_stand_in_package(tmp_path, monkeypatch):
    """The image-reward package cannot be installed here (it needs torchvision); a stand-in module with
    its API (``ImageReward(med_config, device)``, ``inference_rank(prompt, images)``) checks the glue:
    weights loaded with weights_only, one ranking call per distinct prompt, scores back in order."""
    import sys
    import types

    from PIL import Image

    class StandIn(torch.nn.Module):
        def __init__(self, med_config, device="cpu"):
            super().__init__()
            assert Path(med_config).is_file()
            self.scale = torch.nn.Parameter(torch.zeros(()))
            self.calls = []

        def inference_rank(self, prompt, images):
            assert all(isinstance(image, Image.Image) for image in images)
            self.calls.append(prompt)
            rewards = [float(self.scale) * np.asarray(image, np.float32)[..., 0].mean() / 255 + len(prompt) for image in images]
            return list(range(1, len(images) + 1)), rewards if len(rewards) > 1 else rewards[0]

    made = []
    module = types.ModuleType("ImageReward.ImageReward")
    module.ImageReward = lambda **kwargs: made.append(StandIn(**kwargs)) or made[-1]
    monkeypatch.setitem(sys.modules, "ImageReward", types.ModuleType("ImageReward"))
    monkeypatch.setitem(sys.modules, "ImageReward.ImageReward", module)
    torch.save({"scale": torch.tensor(2.0)}, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text("{}")

    reward = parse_reward("imagereward", {"imagereward": str(tmp_path / "ImageReward.pt")})
    batch = images(3, (8, 8))
    prepared = jnp.stack([reward.prepare(PROMPTS[0]), reward.prepare(PROMPTS[1])])
    scores = np.asarray(jax.vmap(lambda p: reward.score(batch, None, p))(prepared))
    red = np.round(np.clip(np.asarray(batch), 0, 1) * 255)[..., 0].mean(axis=(1, 2)) / 255
    np.testing.assert_allclose(scores, np.stack([2.0 * red + len(p) for p in PROMPTS]), rtol=1e-5)
    assert made[0].calls == PROMPTS  # one call per prompt, for all of its images
    with pytest.raises(JaxalignError, match=r"needs BLIP's med_config.json; not found at .*elsewhere"):
        parse_reward("imagereward", {"imagereward": {"path": str(tmp_path / "ImageReward.pt"), "med_config": str(tmp_path / "elsewhere" / "m.json")}})


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A tiny random transformers Dinov2Model (safetensors) whose position embeddings are interpolated to the
    crop, as the released models' 518-pixel tables are to 224, with its image processor's settings."""
    from transformers import Dinov2Config, Dinov2Model

    from jaxalign.testing import perturb_norms_and_biases

    torch.manual_seed(0)
    model = perturb_norms_and_biases(Dinov2Model(Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=42, patch_size=7,
    )), seed=6)  # fmt: skip
    with torch.no_grad():  # layer scales start at 1 and the tokens at 0: make a wrong mapping visible
        for name, parameter in model.named_parameters():
            if "lambda" in name or "token" in name:
                parameter.add_(0.1 * torch.randn(parameter.shape))
    path = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    model.save_pretrained(path, safe_serialization=True)
    processor = {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return model, path


def test_dinov2_preprocessing_matches_its_image_processor_to_one_8bit_level():
    from transformers import BitImageProcessor

    for height, width in ((64, 80), (300, 260)):
        pixels = np.clip(np.round(np.asarray(images(2, (height, width))) * 255), 0, 255).astype(np.uint8)
        processor = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_convert_rgb=True,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
        expected = processor(images=list(pixels), return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
        ours = np.asarray(clip_preprocess(jnp.asarray(pixels / 255.0, jnp.float32), 224, processor.image_mean, processor.image_std, resize=256))
        np.testing.assert_allclose(ours, expected, atol=0.02)  # one 8-bit level is 1 / 255 / 0.224 = 0.018
        assert np.abs(ours - expected).mean() < 0.006


def test_novelty_matches_pytorch_dinov2_features_and_the_knn_formula(tiny_dinov2):
    model, path = tiny_dinov2
    batch = images(5, (48, 40))
    for top_k in (2, 15):
        reward = parse_reward("novelty", {"novelty": {"path": str(path), "top_k": top_k}})
        pixels = clip_preprocess(batch, 28, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=32)
        with torch.no_grad():
            features = model(pixel_values=torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2)).pooler_output.double()
        distances = torch.cdist(features, features)
        distances.fill_diagonal_(float("inf"))
        expected = distances.topk(min(top_k, 4), largest=False).values.mean(dim=1).numpy()
        assert expected.std() > 0.01 * expected.mean()  # the images' novelties differ, so the order is checked
        # 2e-4 apart (features of std ~1): transformers' Flax DINOv2 interpolates the position embeddings with
        # jax.image's bicubic, PyTorch with torch's; without interpolation the features agree to 5e-7.
        np.testing.assert_allclose(np.asarray(reward.score(batch, reward.params)), expected, atol=5e-4)
    grad = jax.grad(lambda x: reward.score(x, reward.params).sum())(batch)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_knn_novelty_by_hand():
    from jaxalign.learned_rewards import knn_novelty

    line = jnp.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(knn_novelty(line, 1), [1.0, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(knn_novelty(line, 15), [2.0, 1.5, 2.5], rtol=1e-6)  # k is capped at N - 1
    np.testing.assert_array_equal(knn_novelty(line[:1], 15), [0.0])  # alone (the baseline): 0, as the reference's first image
