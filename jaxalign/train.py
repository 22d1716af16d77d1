"""Training the embedded tiny Stable Diffusion model on the procedural shapes data (:mod:`jaxalign.shapes`).

Latent diffusion in two stages (Rombach et al. 2022, arXiv 2112.10752), with SD's own components
at tiny size:

1. ``autoencoder``: AutoencoderKL trained on reconstructions (L1 + squared error) with a small KL
   term; its latent scaling factor is then set to 1 / std of the latents, as SD's 0.18215 was.
2. ``denoiser``: CLIP text encoder and UNet trained jointly with epsilon prediction under the
   model's DDPM noise schedule (SD's scaled-linear betas). Captions are replaced by the empty
   prompt 10% of the time, so classifier-free guidance (Ho & Salimans 2022) works.

Each stage is one jitted update ``(state, frozen, batch, key) -> (state, metrics)`` over a
:class:`TrainState` pytree; the exported weights are an exponential moving average. Batches and
keys are functions of the step number, so a run resumed from an orbax checkpoint sees the same
data as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxalign import shapes
from jaxalign.checkpoint import Checkpointer
from jaxalign.errors import JaxalignError
from jaxalign.files import write_csv
from jaxalign.models import DiffusionModel, Params, init_model, save_model, with_latent_scale
from jaxalign.schedulers import AUTO, RectifiedFlow, VariancePreserving, resolve_scheduler

CAPTION_DROPOUT = 0.1


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Params  # the components this stage trains
    opt_state: Any
    ema: Params


@dataclasses.dataclass(frozen=True)
class StageConfig:
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999


def make_optimizer(config: StageConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up, cosine decay to 10% and gradient clipping at norm 1."""
    warmup = min(config.warmup_steps, config.steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(config.steps, warmup + 1), config.learning_rate / 10
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


def init_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    params = jax.tree.map(jnp.array, params)  # copies: the update donates its state
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), ema=jax.tree.map(jnp.array, params))


def make_update(loss_fn: Callable, optimizer: optax.GradientTransformation, ema_decay: float) -> Callable:
    """Jitted ``update(state, frozen, batch, key) -> (state, metrics)`` for ``loss_fn(params, frozen, batch, key)``."""

    def update(state: TrainState, frozen: Params, batch: dict, key: jax.Array):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optax.incremental_update(params, state.ema, 1.0 - ema_decay)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return jax.jit(update, donate_argnums=0)


def autoencoder_loss(model: DiffusionModel, kl_weight: float = 1e-4) -> Callable:
    """Reconstruction (L1 + squared error) of a posterior sample, plus ``kl_weight`` x KL to N(0, I) per element."""
    scale = model.autoencoder.scaling_factor

    def loss_fn(params, frozen, batch, key):
        mean, logvar = model.encode(params, batch["images"])
        latents = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        error = model.decode(params, latents, clip=False) - batch["images"]
        reconstruction = jnp.mean(jnp.abs(error)) + jnp.mean(error**2)
        raw_mean, raw_logvar = mean / scale, logvar - 2 * jnp.log(scale)
        kl = 0.5 * jnp.mean(raw_mean**2 + jnp.exp(raw_logvar) - 1.0 - raw_logvar)
        return reconstruction + kl_weight * kl, {"reconstruction": reconstruction, "kl": kl}

    return loss_fn


def denoiser_loss(model: DiffusionModel) -> Callable:
    """The training loss of the model's noise process (:func:`epsilon_loss` or :func:`rectified_flow_loss`);
    latents are autoencoder posterior samples of the batch images, conditioning the trained text encoders'."""
    return _LOSSES[model.noise_process](model)


def epsilon_loss(model: DiffusionModel) -> Callable:
    """Epsilon-prediction MSE at uniform timesteps of the model's own variance-preserving noise schedule (DDPM)."""
    process = resolve_scheduler(AUTO, model.scheduler_config, model.noise_process).process
    alphas_cumprod = jnp.asarray(process.alphas_cumprod(), jnp.float32)

    def loss_fn(params, frozen, batch, key):
        latent_key, time_key, noise_key = jax.random.split(key, 3)
        mean, logvar = model.encode(frozen, batch["images"])
        clean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(latent_key, mean.shape)
        t = jax.random.randint(time_key, (clean.shape[0],), 0, len(alphas_cumprod))
        noise = jax.random.normal(noise_key, clean.shape)
        alpha_bar = alphas_cumprod[t][:, None, None, None]
        noisy = jnp.sqrt(alpha_bar) * clean + jnp.sqrt(1.0 - alpha_bar) * noise
        context = model.encode_tokens(params, batch["token_ids"])
        loss = jnp.mean((model.predict(params, noisy, t, context) - noise) ** 2)
        return loss, {}

    return loss_fn


def rectified_flow_loss(model: DiffusionModel) -> Callable:
    """Rectified-flow velocity MSE (Esser et al. 2024, arXiv 2403.03206, eq. 2 with SD3's choices): x_t = (1 - t) x0
    + t eps, target eps - x0, t logit-normal (sigmoid of N(0, 1), which weights the middle of the path), the time
    input t x num_train_timesteps as the flow schedulers give it."""
    total = resolve_scheduler(AUTO, model.scheduler_config, model.noise_process).process.num_train_timesteps

    def loss_fn(params, frozen, batch, key):
        latent_key, time_key, noise_key = jax.random.split(key, 3)
        mean, logvar = model.encode(frozen, batch["images"])
        clean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(latent_key, mean.shape)
        t = jax.nn.sigmoid(jax.random.normal(time_key, (clean.shape[0],)))
        noise = jax.random.normal(noise_key, clean.shape)
        noisy = (1.0 - t[:, None, None, None]) * clean + t[:, None, None, None] * noise
        context = model.encode_tokens(params, batch["token_ids"])
        loss = jnp.mean((model.predict(params, noisy, t * total, context) - (noise - clean)) ** 2)
        return loss, {}

    return loss_fn


_LOSSES = {VariancePreserving: epsilon_loss, RectifiedFlow: rectified_flow_loss}


def shapes_batch(model: DiffusionModel, data_seed: int, stage: str, step: int, batch_size: int) -> dict:
    """The batch for one step: rendered images, and token ids with captions dropped at CAPTION_DROPOUT."""
    seed = [data_seed, sum(map(ord, stage)), step]
    data = shapes.make_batch(int(np.random.default_rng(seed).integers(2**62)), batch_size)
    drop = np.random.default_rng([*seed, 1]).random(batch_size) < CAPTION_DROPOUT
    captions = ["" if d else c for c, d in zip(data.captions, drop)]
    return {"images": jnp.asarray(data.images), "token_ids": jax.tree.map(jnp.asarray, model.tokenize(captions))}


def run_stage(
    name: str,
    make_batch: Callable[[int, int], dict],
    loss_fn: Callable,
    params: Params,
    frozen: Params,
    config: StageConfig,
    workdir: Path,
    data_seed: int,
    checkpoint_every: int = 500,
    progress: bool = True,
) -> TrainState:
    """Train ``params`` for ``config.steps`` steps on ``make_batch(step, batch_size)``, resuming from
    ``workdir/checkpoints/<name>``; losses go to ``<name>_loss.csv``."""
    from tqdm import tqdm

    optimizer = make_optimizer(config)
    update = make_update(loss_fn, optimizer, config.ema_decay)
    state = init_state(params, optimizer)
    checkpointer = Checkpointer(workdir / "checkpoints" / name, every=checkpoint_every, keep=2)
    log = workdir / f"{name}_loss.csv"
    rows: list[dict] = []
    restored = checkpointer.restore_latest(state)
    if restored is not None:
        state = restored[1]
        rows = [r for r in _read_csv(log) if int(r["step"]) <= int(state.step)]
    key = jax.random.key(data_seed)
    start = int(state.step)
    bar = tqdm(total=config.steps, initial=start, desc=name, disable=not progress, dynamic_ncols=True)
    begin = time.perf_counter()
    for step in range(start, config.steps):
        batch = make_batch(step, config.batch_size)
        state, metrics = update(state, frozen, batch, jax.random.fold_in(key, step))
        if (step + 1) % 25 == 0 or step + 1 == config.steps:
            row = {"step": step + 1, **{k: float(v) for k, v in metrics.items()}}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update(1)
        if checkpointer.due(step + 1, last=step + 1 == config.steps):
            checkpointer.save(step + 1, state)
            write_csv(log, rows)
    bar.close()
    checkpointer.close()
    write_csv(log, rows)
    if config.steps > start:
        print(f"{name}: {config.steps - start} steps in {time.perf_counter() - begin:.1f} s", flush=True)
    return state


def latent_normalisation(model: DiffusionModel, vae_params: Params, data_seed: int, shift: bool = False, num_images: int = 1024) -> tuple[float, float | None]:
    """(scaling_factor, shift_factor) of the raw posterior means over ``num_images`` shapes images: 1 / std, as SD's
    0.18215 was set; with ``shift``, the mean is subtracted first, as SD3's and Flux's shift factors are (the
    shift is ``None`` otherwise)."""
    images = jnp.asarray(shapes.make_batch(data_seed + 7919, num_images).images)
    mean, _ = jax.jit(model.encode)({"vae": vae_params}, images)
    raw = mean / model.autoencoder.scaling_factor + model.autoencoder.shift_factor
    offset = float(jnp.mean(raw)) if shift else 0.0
    return float(1.0 / jnp.std(raw - offset)), (offset if shift else None)


def train_tiny(
    config_dir: Path,
    workdir: Path,
    out_dir: Path,
    autoencoder: StageConfig | None,
    denoiser: StageConfig,
    data_seed: int = 0,
    checkpoint_every: int = 500,
    progress: bool = True,
    pretrained_vae: Params | None = None,
    shift: bool = False,
    export_dtype: str | None = None,
) -> tuple[DiffusionModel, Params]:
    """Both stages (or, given ``pretrained_vae``, the denoiser alone on that autoencoder), then the EMA weights
    exported to ``out_dir`` in diffusers' Flax layout. The denoiser stage trains the text encoders and the
    denoising network together with the loss of the model's noise process; ``shift`` gives the latents a shift
    factor (SD3's layout); ``export_dtype`` (e.g. ``"float16"``) is the stored weights' type."""
    workdir.mkdir(parents=True, exist_ok=True)
    model, params = init_model(config_dir, seed=data_seed)
    if pretrained_vae is None:
        state = run_stage(
            "autoencoder", functools.partial(shapes_batch, model, data_seed, "autoencoder"), autoencoder_loss(model), {"vae": params["vae"]}, {},
            autoencoder, workdir, data_seed, checkpoint_every, progress,
        )  # fmt: skip
        vae = state.ema["vae"]
    else:
        vae = pretrained_vae
    model = with_latent_scale(model, *latent_normalisation(model, vae, data_seed, shift))
    trainable = {folder: params[folder] for folder in (*model.text_encoders, model.family.denoiser_folder)}
    state = run_stage(
        "denoiser", functools.partial(shapes_batch, model, data_seed, "denoiser"), denoiser_loss(model), trainable, {"vae": vae}, denoiser,
        workdir, data_seed, checkpoint_every, progress,
    )  # fmt: skip
    trained = {**jax.device_get(state.ema), "vae": jax.device_get(vae)}
    save_model(model, trained, out_dir, weight_dtype=export_dtype)
    return model, trained


def write_clip_tokenizer(bpe_vocab_gz: Path, out_dir: Path, max_length: int = 77) -> None:
    """Write Stable Diffusion's CLIP tokenizer (49,408 tokens) from CLIP's BPE merge list.

    ``bpe_simple_vocab_16e6.txt.gz`` ships with OpenAI's CLIP and with the open-clip-torch
    package; the vocabulary is the 256 byte symbols, the same with an end-of-word marker, one
    token per merge (the first 48,894), and the start/end tokens.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    if not bpe_vocab_gz.is_file():
        raise JaxalignError(f"CLIP BPE vocabulary not found: {bpe_vocab_gz} (bpe_simple_vocab_16e6.txt.gz from open-clip-torch)")
    lines = gzip.decompress(bpe_vocab_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    scratch = out_dir / "_build"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (scratch / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(scratch)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def plot_losses(workdir: Path, stages: tuple[str, ...] = ("autoencoder", "denoiser")) -> Path:
    """Loss curves of ``stages``, from their CSV logs, as ``workdir/loss.png``."""
    from matplotlib.figure import Figure  # not pyplot: a library call must not switch the user's backend

    fig = Figure(figsize=(4.5 * len(stages), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(stages)))
    for ax, name in zip(axes, stages):
        rows = _read_csv(workdir / f"{name}_loss.csv")
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
        ax.set(title=name, xlabel="step", ylabel="loss", yscale="log")
    fig.tight_layout()
    path = workdir / "loss.png"
    fig.savefig(path, dpi=100)
    return path


def caption_following(
    model: DiffusionModel, params: Params, held_out: bool, count: int = 96, seed: int = 0, num_steps: int = 25, guidance_scale: float = 5.0
) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """Per-attribute accuracy of :func:`jaxalign.shapes.describe` on samples for full captions.

    One image per caption (seeded noise, the model's own scheduler), for ``count`` captions of held-out or training
    combinations. Returns accuracies (shape, colour, background, size, position, all), the images
    and the captions.
    """
    from jaxalign.sampler import make_sampler

    data = shapes.make_batch(seed + 104729, count, held_out=held_out)
    captions = [shapes.caption(a) for a in data.attributes]
    latent_shape = model.latent_shape(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    sampler = make_sampler(model, "auto", num_steps, image_tokens=model.image_tokens(latent_shape))
    contexts = model.encode_prompts(params, [*captions, ""])
    noise = jax.random.normal(jax.random.key(seed), (count, 1, *latent_shape))
    sample_one = jax.vmap(sampler.sample, in_axes=(None, 0, 0, None, None))
    prompts, empty = jax.tree.map(lambda x: x[:-1], contexts), jax.tree.map(lambda x: x[-1], contexts)
    images = np.asarray(jax.jit(sample_one)(params, noise, prompts, empty, guidance_scale))[:, 0]
    read = [shapes.describe(image) for image in images]
    accuracy = {
        field: float(np.mean([r is not None and getattr(r, field) == getattr(a, field) for r, a in zip(read, data.attributes)]))
        for field in shapes.Attributes._fields
    }
    accuracy["all"] = float(np.mean([r == a for r, a in zip(read, data.attributes)]))
    return accuracy, images, captions


def save_grid(images: np.ndarray, path: Path, columns: int = 8, scale: int = 3) -> None:
    """Images [N, H, W, 3] in [0, 1] as one PNG grid, upscaled by ``scale`` (nearest)."""
    from PIL import Image

    rows = -(-len(images) // columns)
    h, w = images.shape[1:3]
    grid = np.ones((rows * (h + 2), columns * (w + 2), 3), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = image
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)
