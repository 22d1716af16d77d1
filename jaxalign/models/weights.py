"""Weight files: discovery (Flax msgpack, safetensors, ``.bin``, shards), readers, PyTorch -> Flax renaming,
shape checks against a model's ``eval_shape`` tree, and seeded initialisation.

Hand-written where a library seems to do it, for these reasons: the safetensors reader memory-maps the file
with NumPy (the ``safetensors`` package's NumPy API has no bfloat16, and its torch API needs torch); the
renamer maps only what jaxalign loads, where diffusers' converter needs torch, runs a full Flax init, reads
only ``.bin`` and maps embeddings to ``scale``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError


_FLAX_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack")

_TORCH_WEIGHTS = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",  # Hub "fp16" variants
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
)  # fmt: skip

def _weight_files(component_dir: Path) -> list[Path]:
    """The weight file(s) of one component, preferring Flax, then safetensors, then .bin; shards included."""
    if not component_dir.is_dir():
        return []
    for name in (*_FLAX_WEIGHTS, *_TORCH_WEIGHTS):
        if (component_dir / name).is_file():
            return [component_dir / name]
        # Shards: "model.safetensors.index.json", and the Hub's variant form "model.safetensors.index.fp16.json".
        base, _, variant = name.partition(".fp16")
        index = component_dir / (f"{base}{variant}.index.fp16.json" if variant else f"{name}.index.json")
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise JaxalignError(f"{index} has no \"weight_map\" object naming its shards")
            shards = sorted(set(weight_map.values()))
            return [component_dir / shard for shard in shards]
    return []

def read_weights(component_dir: Path, shapes: Any) -> Any:
    """One component's weights as a Flax params tree, checked key by key against ``shapes``.

    Flax ``.msgpack`` files are restored directly; PyTorch state dicts (safetensors, or ``.bin``
    through ``torch.load(weights_only=True)``) are renamed and transposed to Flax's layout.
    """
    files = _weight_files(component_dir)
    if not files:
        expected = " or ".join((*_FLAX_WEIGHTS, *_TORCH_WEIGHTS))
        raise JaxalignError(f"no weights in {component_dir} (expected {expected})")
    try:
        if files[0].name in _FLAX_WEIGHTS:
            from flax.serialization import msgpack_restore

            flat = flatten_shapes(msgpack_restore(files[0].read_bytes()))
            flat = {k[1:] if k[0] == "params" else k: v for k, v in flat.items()}
        else:
            state: dict[str, np.ndarray] = {}
            for file in files:
                state.update(_read_safetensors(file) if file.suffix == ".safetensors" else _read_torch_bin(file))
            flat = torch_to_flax(state, flatten_shapes(shapes))
    except JaxalignError:
        raise
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in its reader's own way; name the file
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise JaxalignError(f"cannot read weights {', '.join(str(f) for f in files)}: damaged or not a weights file ({type(error).__name__}: {detail})") from None
    return checked_tree(flat, shapes, component_dir)

_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}
# Weights some checkpoints store a second time under another name (T5's input embedding is also "shared").
_TIED_ALIASES = ("encoder.embed_tokens.weight",)

def torch_to_flax(state: dict[str, np.ndarray], expected: dict) -> dict:
    """Rename a PyTorch state dict to Flax keys, transposing linear and conv kernels."""
    # diffusers' Flax modules name repeated blocks "down_blocks_0" where PyTorch has "down_blocks.0";
    # transformers' Flax models keep "layers/0".
    numbered = any(part.isdigit() for key in expected for part in key)
    flat = {}
    for pt_key, tensor in state.items():
        if pt_key.endswith("position_ids") or pt_key in _TIED_ALIASES:  # a buffer some CLIP checkpoints carry; a tied copy
            continue
        key = tuple(pt_key.split("."))
        if not numbered:
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
    if (*prefix, last) in expected and last not in ("weight", "gamma", "beta"):  # a buffer or parameter named alike
        return (*prefix, last), tensor
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

    size = path.stat().st_size
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if size < 8 or header_size > size - 8:  # checked before reading: a random prefix would ask for terabytes
            raise JaxalignError(f"{path} is not a safetensors file (its header claims {header_size} bytes of {size})")
        header = json.loads(handle.read(header_size))
    if not isinstance(header, dict):
        raise JaxalignError(f"{path} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size) if size > 8 + header_size else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise JaxalignError(f"unsupported dtype {info['dtype']} for {name} in {path}")
        dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        begin, end = info["data_offsets"]
        if end > data.size or end - begin != int(np.prod(info["shape"])) * dtype.itemsize:
            raise JaxalignError(f"{path} is truncated or damaged: {name} needs bytes {begin}..{end} of {data.size}")
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors

def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict from safetensors or a ``.pth``/``.pt``/``.bin`` (``weights_only`` unpickling)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise JaxalignError(f"weights file not found: {path}")
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)

def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise JaxalignError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if isinstance(state.get("state_dict"), dict):  # training checkpoints (HPSv2) nest the weights
        state = state["state_dict"]
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}

def seeded_init(shapes: Any, seed: int, device_dtype: Any = None) -> Any:
    """Deterministic random weights for a tree of shapes, independent of traversal order.

    Much faster than running a model's ``init`` on CPU. Kernels are drawn with variance
    1/fan_in (LeCun normal, as flax's dense/conv defaults), embeddings with std 0.02 (as CLIP),
    norm scales are one and biases zero. Drawn with NumPy on the host (float32), or, with
    ``device_dtype``, with ``jax.random`` on the default device in that type: other numbers from the same rules,
    for models whose host-side draw would take minutes (SD 3.5 and Flux sizes hold 8 and 17 billion weights).
    """

    def init_leaf(path, leaf):
        name = jax.tree_util.keystr(path)
        shape = tuple(leaf.shape)
        rule = _leaf_rule(str(path[-1].key) if hasattr(path[-1], "key") else name, shape)
        if device_dtype is not None:
            key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
            return _device_normal(key, shape, device_dtype, *rule[:2]) if rule[2] is None else jnp.full(shape, rule[2], device_dtype)
        if rule[2] is None:
            return rule[0] * np.random.default_rng([seed, zlib.crc32(name.encode())]).standard_normal(shape, dtype=np.float32) / rule[1]
        return np.full(shape, rule[2], np.float32)

    return jax.tree_util.tree_map_with_path(init_leaf, shapes)


def _leaf_rule(last: str, shape: tuple[int, ...]) -> tuple[float, float, float | None]:
    """A leaf named ``last`` is a normal draw times the first number over the second, or, where the third is set,
    that constant."""
    if last == "kernel":
        return 1.0, float(np.sqrt(int(np.prod(shape[:-1])) or 1)), None
    if last == "embedding":
        return 0.02, 1.0, None
    return 0.0, 1.0, 1.0 if last == "scale" else 0.0


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _device_normal(key, shape, dtype, multiplier, divisor):
    return (multiplier * jax.random.normal(key, shape, jnp.float32) / divisor).astype(dtype)

def read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxalignError(f"missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JaxalignError(f"{path} is not valid JSON ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise JaxalignError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data

def flatten_shapes(shapes: Any) -> dict:
    from flax.traverse_util import flatten_dict

    return flatten_dict(shapes)

def checked_tree(flat: dict, shapes: Any, source: Path) -> Any:
    """Unflatten ``flat`` after checking its keys and shapes against ``shapes`` (one clear error)."""
    from flax.traverse_util import unflatten_dict

    expected = flatten_shapes(shapes)
    missing = sorted("/".join(k) for k in set(expected) - set(flat))
    unexpected = sorted("/".join(k) for k in set(flat) - set(expected))
    if missing or unexpected:
        raise JaxalignError(
            f"weights in {source} do not match its config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, leaf in flat.items():
        if tuple(np.shape(leaf)) != tuple(expected[key].shape):
            raise JaxalignError(
                f"weight {'/'.join(key)} in {source} has shape {tuple(np.shape(leaf))}, its config expects {tuple(expected[key].shape)}"
            )
    return unflatten_dict(flat)


class _DropFlaxDeprecationNotice(logging.Filter):
    """Drops diffusers'/transformers' "Flax (JAX) classes are deprecated" notice, which they log each time a
    Flax module is built or traced (the pins in pyproject.toml keep those classes); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "classes are deprecated and will be removed" not in record.getMessage()


@functools.cache
def quiet_flax_deprecation_notices() -> None:
    # A filter on the libraries' own handlers rather than their verbosity: a caller's log levels stay as set.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        for handler in library.get_logger().handlers:
            handler.addFilter(_DropFlaxDeprecationNotice())
