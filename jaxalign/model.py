"""Stable Diffusion (1.x/2.x architecture) components behind one small, pure interface.

This is the only module of jaxalign that touches diffusers' and transformers' Flax classes
(``FlaxUNet2DConditionModel``, ``FlaxAutoencoderKL``, ``FlaxCLIPTextModel``), so the rest of
the package sees a :class:`DiffusionModel` (static: modules, tokenizer, shapes, noise schedule)
and a params pytree (``{"text_encoder", "unet", "vae"}``) that is passed explicitly to every
jitted function.

Two sources:

* ``"embedded"``: a tiny SD-architecture model (32x32 images) trained on procedural shapes by
  ``scripts/train_tiny.py`` (MODEL.md) and shipped in ``jaxalign/embedded`` in diffusers' layout
  with Flax weights and Stable Diffusion's CLIP tokenizer, so the whole pipeline runs with no
  downloads.
* a local diffusers-format directory (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with Flax weights, or PyTorch weights that
  are converted with ``from_pt``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers import NoiseSchedule

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
_COMPONENTS = ("unet", "vae", "text_encoder")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """Static half of a Stable Diffusion model; the weights travel separately as ``Params``."""

    name: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_schedule: NoiseSchedule
    dtype: Any

    @property
    def latent_channels(self) -> int:
        return int(self.unet.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.unet.sample_size) * self.vae_scale_factor

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if height % f or width % f:
            raise JaxalignError(f"height and width must be multiples of {f} for model {self.name!r}, got {height}x{width}")
        return (self.latent_channels, height // f, width // f)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [len(prompts), max_prompt_tokens], padded and truncated like SD pipelines."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_prompt_tokens,
            truncation=True,
            return_tensors="np",
        ).input_ids
        return ids.astype(np.int32)

    def encode_tokens(self, params: Params, token_ids: jax.Array) -> jax.Array:
        """Text-encoder hidden states [B, tokens, dim] for token ids [B, tokens]."""
        return self.text_encoder(token_ids, params=params["text_encoder"])[0]

    def encode_prompts(self, params: Params, prompts: Sequence[str]) -> jax.Array:
        return _jit_encode(self)(params, jnp.asarray(self.tokenize(prompts)))

    def predict_noise(self, params: Params, latents: jax.Array, timestep: jax.Array, context: jax.Array) -> jax.Array:
        """UNet output for latents [B, c, h, w] at one timestep, conditioned on context [B, tokens, dim]."""
        out = self.unet.apply(
            {"params": params["unet"]},
            latents.astype(self.dtype),
            jnp.broadcast_to(timestep, (latents.shape[0],)),
            context.astype(self.dtype),
        ).sample
        return out.astype(jnp.float32)

    def decode(self, params: Params, latents: jax.Array, clip: bool = True) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] from latents [B, c, h, w]; ``clip=False`` leaves them unclipped."""
        scaled = (latents / self.vae.scaling_factor).astype(self.dtype)
        images = self.vae.apply({"params": params["vae"]}, scaled, method=self.vae.decode).sample
        images = jnp.transpose(images.astype(jnp.float32), (0, 2, 3, 1)) / 2 + 0.5
        return jnp.clip(images, 0.0, 1.0) if clip else images

    def encode(self, params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The VAE posterior's mean and log-variance [B, c, h, w] (scaled like the sampler's latents)
        for images [B, H, W, 3] in [0, 1]."""
        pixels = jnp.transpose(images * 2 - 1, (0, 3, 1, 2)).astype(self.dtype)
        posterior = self.vae.apply({"params": params["vae"]}, pixels, method=self.vae.encode).latent_dist
        mean = jnp.transpose(posterior.mean.astype(jnp.float32), (0, 3, 1, 2)) * self.vae.scaling_factor
        logvar = jnp.transpose(posterior.logvar.astype(jnp.float32), (0, 3, 1, 2)) + 2 * jnp.log(self.vae.scaling_factor)
        return mean, logvar


def with_latent_scale(model: DiffusionModel, scaling_factor: float) -> DiffusionModel:
    """The same model with its VAE latent scaling factor replaced (set after training a VAE)."""
    from diffusers import FlaxAutoencoderKL

    vae = FlaxAutoencoderKL.from_config({**model.vae.config, "scaling_factor": scaling_factor}, dtype=model.dtype)
    return dataclasses.replace(model, vae=vae)


@functools.cache
def _jit_encode(model: DiffusionModel):
    return jax.jit(model.encode_tokens)


def load_model(source: str = EMBEDDED, dtype: str = "float32") -> tuple[DiffusionModel, Params]:
    """Load ``"embedded"`` (the shipped tiny model) or a local diffusers-format directory."""
    if dtype not in _DTYPES:
        raise JaxalignError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    _quiet_flax_deprecation_warnings()
    if source == EMBEDDED:
        return _load(EMBEDDED_DIR, EMBEDDED, _DTYPES[dtype])
    path = Path(source).expanduser()
    if not path.is_dir():
        raise JaxalignError(f"model directory not found: {path} (expected a diffusers-format directory or 'embedded')")
    missing = [c for c in (*_COMPONENTS, "scheduler") if not (path / c).is_dir()]
    if missing:
        raise JaxalignError(f"model directory {path} lacks {', '.join(missing)}/ (expected diffusers layout)")
    return _load(path, str(path), _DTYPES[dtype])


def init_model(config_dir: str | os.PathLike, seed: int = 0, dtype: str = "float32") -> tuple[DiffusionModel, Params]:
    """A model from a diffusers-format directory's configs with fresh seeded weights (for training)."""
    _quiet_flax_deprecation_warnings()
    path = Path(config_dir)
    return _load(path, str(path), _DTYPES[dtype], seed=seed)


def _load(path: Path, name: str, dtype, seed: int | None = None) -> tuple[DiffusionModel, Params]:
    """Modules from ``path``'s configs; weights from its files, or seeded random ones when ``seed`` is given."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel

    unet = FlaxUNet2DConditionModel.from_config(_read_json(path / "unet" / "config.json"), dtype=dtype)
    vae = FlaxAutoencoderKL.from_config(_read_json(path / "vae" / "config.json"), dtype=dtype)
    text_encoder = FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"), dtype=dtype, _do_init=False)
    schedule = NoiseSchedule.from_config(_read_json(path / "scheduler" / "scheduler_config.json"))
    shapes = {
        "unet": jax.eval_shape(unet.init_weights, jax.random.key(0)),
        "vae": jax.eval_shape(vae.init_weights, jax.random.key(0)),
        "text_encoder": text_encoder.params_shape_tree,
    }
    if seed is not None:
        params = {c: seeded_init(tree, seed=seed + i) for i, (c, tree) in enumerate(shapes.items())}
    else:
        params = {c: read_weights(path / c, tree) for c, tree in shapes.items()}
    if (path / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    else:
        tokenizer = _byte_level_clip_tokenizer(text_encoder.config.max_position_embeddings)

    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype if np.issubdtype(x.dtype, np.floating) else x.dtype), params)
    model = DiffusionModel(
        name=name, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, noise_schedule=schedule, dtype=dtype
    )
    return model, params


_FLAX_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
_TORCH_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _weight_files(component_dir: Path) -> list[Path]:
    """The weight file(s) of one component, preferring Flax, then safetensors, then .bin; shards included."""
    if not component_dir.is_dir():
        return []
    for name in (*_FLAX_WEIGHTS, *_TORCH_WEIGHTS):
        if (component_dir / name).is_file():
            return [component_dir / name]
        index = component_dir / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [component_dir / shard for shard in shards]
    return []


def read_weights(component_dir: Path, shapes: Any) -> Any:
    """One component's weights as a Flax params tree, checked key by key against ``shapes``.

    Flax ``.msgpack`` files are restored directly; PyTorch state dicts (safetensors, or ``.bin``
    through ``torch.load(weights_only=True)``) are renamed and transposed to Flax's layout.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    files = _weight_files(component_dir)
    if not files:
        expected = " or ".join((*_FLAX_WEIGHTS, *_TORCH_WEIGHTS))
        raise JaxalignError(f"no weights in {component_dir} (expected {expected})")
    expected = flatten_dict(shapes)
    if files[0].name in _FLAX_WEIGHTS:
        from flax.serialization import msgpack_restore

        flat = flatten_dict(msgpack_restore(files[0].read_bytes()))
        flat = {k[1:] if k[0] == "params" else k: v for k, v in flat.items()}
    else:
        state: dict[str, np.ndarray] = {}
        for file in files:
            state.update(_read_safetensors(file) if file.suffix == ".safetensors" else _read_torch_bin(file))
        flat = _torch_to_flax(state, expected)
    missing = sorted("/".join(k) for k in set(expected) - set(flat))
    unexpected = sorted("/".join(k) for k in set(flat) - set(expected))
    if missing or unexpected:
        raise JaxalignError(
            f"weights in {component_dir} do not match its config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, leaf in flat.items():
        if tuple(leaf.shape) != tuple(expected[key].shape):
            raise JaxalignError(
                f"weight {'/'.join(key)} in {component_dir} has shape {tuple(leaf.shape)}, its config expects {tuple(expected[key].shape)}"
            )
    return unflatten_dict(flat)


_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}


def _torch_to_flax(state: dict[str, np.ndarray], expected: dict) -> dict:
    """Rename a PyTorch state dict to Flax keys, transposing linear and conv kernels."""
    flat = {}
    for pt_key, tensor in state.items():
        if pt_key.endswith("position_ids"):  # a buffer some CLIP checkpoints carry, not a weight
            continue
        key = tuple(pt_key.split("."))
        if key[0] != "text_model":
            # diffusers' Flax modules name repeated blocks "down_blocks_0" where PyTorch has "down_blocks.0";
            # transformers' Flax CLIP keeps "layers/0".
            key = tuple(re.sub(r"(\w+)\.(\d+)", r"\1_\2", pt_key).split("."))
        flax_key, value = _flax_leaf(key, tensor, expected)
        flat[flax_key] = value
    return flat


def _flax_leaf(key: tuple[str, ...], tensor: np.ndarray, expected: dict) -> tuple[tuple[str, ...], np.ndarray]:
    prefix, last = key[:-1], key[-1]
    if prefix and prefix[-1] in _ATTENTION_NAMES:  # the VAE's Flax attention uses the older names
        renamed = (*prefix[:-1], _ATTENTION_NAMES[prefix[-1]])
        if (*renamed, "kernel") in expected:
            prefix = renamed
    if last in ("weight", "gamma") and (*prefix, "scale") in expected:
        return (*prefix, "scale"), tensor
    if last == "beta":
        return (*prefix, "bias"), tensor
    if last == "weight" and (*prefix, "embedding") in expected:
        return (*prefix, "embedding"), tensor
    if last == "weight":
        kernel = (*prefix, "kernel")
        if tensor.ndim == 4 and len(getattr(expected.get(kernel), "shape", ())) == 2:
            tensor = tensor[:, :, 0, 0]  # a 1x1 conv stored where Flax has a dense layer
        return kernel, tensor.transpose(2, 3, 1, 0) if tensor.ndim == 4 else tensor.T
    return (*prefix, last), tensor


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map a safetensors file: no pickle, no torch, no copy until the arrays are used."""
    import ml_dtypes

    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise JaxalignError(f"unsupported dtype {info['dtype']} for {name} in {path}")
        dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        begin, end = info["data_offsets"]
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise JaxalignError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def save_model(model: DiffusionModel, params: Params, path: str | os.PathLike) -> None:
    """Write model and params as a diffusers-format directory with Flax weights."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(params)
    for component, cls in (("unet", FlaxUNet2DConditionModel), ("vae", FlaxAutoencoderKL)):
        module = getattr(model, component)
        cls.from_config(module.config).save_pretrained(path / component, params=host[component])
        # Name the PyTorch class, as diffusers directories on the Hub do, so either framework reads it.
        config_file = path / component / "config.json"
        config = json.loads(config_file.read_text())
        config["_class_name"] = config["_class_name"].removeprefix("Flax")
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.text_encoder.save_pretrained(path / "text_encoder", params=host["text_encoder"])
    model.tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.noise_schedule.to_config(), indent=2))
    (path / "model_index.json").write_text((EMBEDDED_DIR / "model_index.json").read_text())


def seeded_init(shapes: Any, seed: int) -> Any:
    """Deterministic random weights for a tree of shapes, independent of traversal order.

    Much faster than running a model's ``init`` on CPU. Kernels are drawn with variance
    1/fan_in (LeCun normal, as flax's dense/conv defaults), embeddings with std 0.02 (as CLIP),
    norm scales are one and biases zero.
    """

    def init_leaf(path, leaf):
        name = jax.tree_util.keystr(path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(leaf.shape)
        last = str(path[-1].key) if hasattr(path[-1], "key") else name
        if last == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            return rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
        if last == "embedding":
            return 0.02 * rng.standard_normal(shape, dtype=np.float32)
        if last == "scale":
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32)

    return jax.tree_util.tree_map_with_path(init_leaf, shapes)


def _byte_level_clip_tokenizer(max_length: int):
    """A CLIP tokenizer over CLIP's 512 byte-level symbols (no merges), built locally.

    Its ids match the first 512 entries of the real CLIP vocabulary and the start/end tokens
    follow them, so any text tokenizes (one token per character) without a download.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    directory = Path(tempfile.mkdtemp(prefix="jaxalign-tokenizer-"))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab_file=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxalignError(f"missing {path}")
    return json.loads(path.read_text())


@functools.cache
def _quiet_flax_deprecation_warnings() -> None:
    # diffusers logs a deprecation warning each time a Flax module is traced.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
