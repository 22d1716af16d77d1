"""Loading and saving diffusion models: the embedded model, diffusers-format directories (Flax msgpack,
safetensors or ``.bin`` weights) and cached Hub repos; seeded random weights from configs (for training).

Sources:

* ``"embedded"``: a tiny SD-architecture model (32x32 images) trained on procedural shapes by
  ``scripts/train_tiny.py`` (MODEL.md) and shipped in ``jaxalign/embedded`` in diffusers' layout
  with Flax weights and Stable Diffusion's CLIP tokenizer, so the whole pipeline runs with no downloads.
* a local diffusers-format directory (``model_index.json``, the denoiser's folder (``unet/``), ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``, and whatever else its family reads, e.g. ``text_encoder_2/``,
  ``tokenizer_2/`` for SDXL).
* a Hub repo id (``"org/name"``) already in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.diffusion import DTYPES, DiffusionModel, Params
from jaxalign.models.families import FAMILIES, ModelFamily, detect_family
from jaxalign.models.hub import EMBEDDED, EMBEDDED_MODELS, resolve_model_dir
from jaxalign.models.weights import quiet_flax_deprecation_notices, read_json, read_weights, seeded_init


def load_model(source: str = EMBEDDED, dtype: str = "float32", family: str = "auto", shard_params: bool = False) -> tuple[DiffusionModel, Params]:
    """Load ``"embedded"``, a local diffusers-format directory, or a Hub repo id from the local cache.

    ``family`` ("auto", or a name in :data:`FAMILIES`) is checked against the directory's
    ``model_index.json``, so a config written for one family refuses another family's weights.
    ``shard_params`` sends each weight from the host straight to its shards over the local devices
    (:func:`jaxalign.search.param_placement`): no device ever holds the whole model.
    """
    if dtype not in DTYPES:
        raise JaxalignError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if family != "auto":
        FAMILIES[family]
    quiet_flax_deprecation_notices()
    if source in EMBEDDED_MODELS:
        path, name = EMBEDDED_MODELS[source], source
    else:
        path = resolve_model_dir(source)
        name = str(path) if Path(source).expanduser().is_dir() else source
    detected = detect_family(path)
    if family not in ("auto", detected.name):
        raise JaxalignError(
            f"model family mismatch: the config expects {family!r} ({' or '.join(FAMILIES[family].pipelines)}) "
            f"but {path} holds a {detected.name!r} model"
        )
    return _load(path, name, DTYPES[dtype], detected, shard_params=shard_params)

def init_model(config_dir: str | os.PathLike, seed: int = 0, dtype: str = "float32", abstract: bool = False, on_device: bool = False) -> tuple[DiffusionModel, Params]:
    """A model from a diffusers-format directory's configs with fresh seeded weights (for training), or with
    ``abstract`` params (``jax.ShapeDtypeStruct``: nothing allocated), enough to lower and compile a program.
    ``on_device``: the weights drawn on the device (``seeded_init``'s ``device_dtype``), for large random models."""
    quiet_flax_deprecation_notices()
    path = Path(config_dir)
    return _load(path, str(path), DTYPES[dtype], detect_family(path), seed=seed, abstract=abstract, on_device=on_device)

def _load(
    path: Path, name: str, dtype, family: ModelFamily, seed: int | None = None, abstract: bool = False, shard_params: bool = False, on_device: bool = False
) -> tuple[DiffusionModel, Params]:
    """Modules from ``path``'s configs (the family builds them); weights from its files, or seeded random ones
    when ``seed`` is given.

    Each leaf goes to the device on its own and is cast there, so the host never holds a second
    full copy (safetensors are memory-mapped).
    """
    folder = family.denoiser_folder
    network = family.denoiser(read_json(path / folder / "config.json"), dtype, str(path / folder / "config.json"))
    autoencoder = family.autoencoder(read_json(path / "vae" / "config.json"), dtype, str(path / "vae" / "config.json"))
    text_encoders = family.text_encoders(path, dtype)
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    shapes = {
        folder: network.param_shapes(),
        "vae": autoencoder.param_shapes(),
        **{encoder_folder: encoder.params_shape_tree for encoder_folder, encoder in text_encoders.items()},
    }
    if abstract:
        params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype), shapes)
    elif seed is not None:
        params = {c: seeded_init(tree, seed=seed + i, device_dtype=dtype if on_device else None) for i, (c, tree) in enumerate(shapes.items())}
    else:
        params = {c: read_weights(path / c, tree) for c, tree in shapes.items()}
    tokenizers = {
        encoder: family.load_tokenizer(path / tokenizer_folder, encoder, text_encoders[encoder])
        for encoder, tokenizer_folder in family.text_folders if encoder in text_encoders
    }  # fmt: skip
    index = path / "model_index.json"
    options = family.options(read_json(index) if index.is_file() else {})

    from jaxalign.search import param_placement

    def to_device(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        x = jax.device_put(x, param_placement(x.shape) if shard_params else None)  # its shards, with shard_params
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    if not abstract:
        params = jax.tree.map(to_device, params)
    model = DiffusionModel(
        name=name, family=family, network=network, autoencoder=autoencoder, text_encoders=text_encoders, tokenizers=tokenizers,
        scheduler_config=scheduler_config, dtype=dtype, family_options=options,
    )  # fmt: skip
    return model, params

def save_model(model: DiffusionModel, params: Params, path: str | os.PathLike, weight_dtype: str | None = None) -> None:
    """Write model and params as a diffusers-format directory with Flax weights (configs name the PyTorch
    classes, as diffusers directories on the Hub do, so either framework reads it); ``weight_dtype``
    (e.g. ``"float16"``) stores the floating-point weights in that type (they load as the configured dtype)."""
    from flax.serialization import to_bytes

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(params)
    if weight_dtype is not None:
        host = jax.tree.map(lambda x: np.asarray(x, weight_dtype) if jnp.issubdtype(np.asarray(x).dtype, jnp.floating) else x, host)
    for folder, module in ((model.family.denoiser_folder, model.network), ("vae", model.autoencoder)):
        (path / folder).mkdir(exist_ok=True)
        config = {**module.config, "_class_name": module.config["_class_name"].removeprefix("Flax")}
        (path / folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (path / folder / "diffusion_flax_model.msgpack").write_bytes(to_bytes(host[folder]))
    for folder, tokenizer_folder in model.family.text_folders:
        if folder in model.text_encoders:
            model.text_encoders[folder].save_pretrained(path / folder, params=host[folder])
            model.tokenizers[folder].save_pretrained(path / tokenizer_folder)
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2) + "\n")
    (path / "model_index.json").write_text(json.dumps(model.family.index(model), indent=2) + "\n")
