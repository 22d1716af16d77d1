"""Speed and memory of one generation: jaxalign against a PyTorch reference loop, and EA against DNO.

    python scripts/benchmark_speed.py --size embedded                      # CPU, the tiny model
    python scripts/benchmark_speed.py --size sd15 --dtype bfloat16         # GPU, SD1.5-size random weights
    python scripts/benchmark_speed.py --size sd35_medium --dtype bfloat16 --compile-only   # the step's XLA memory at SD 3.5-medium size
    python scripts/benchmark_speed.py --size flux_dev --dtype bfloat16 --compile-only      # and at FLUX.1-dev size (popsize 8)
    python scripts/benchmark_speed.py --size tiny_flux --reference --dno                   # CPU dry run of a transformer size

jaxalign: one compiled generation (CoSyNE, JPEG compressibility as in the reference), timed after a
warm-up with ``block_until_ready``, median of ``--generations``; compile time apart; model FLOPs
(see ``model_tflop_per_image``) and an MFU estimate against ``--peak-tflops`` when given.
Reference: diffusers' PyTorch ``StableDiffusionPipeline`` built from the same configs with random
weights (fp16 on GPU, fp32 on CPU), CoSyNE (evotorch's ``Cosyne``, or the same generation in plain
torch) asking for the population, the population pushed through the pipeline in batches of
``--reference-batch`` and scored image by image, as the paper's reference implementation does. DNO (``--dno``): one jaxalign optimisation
step (gradient through the sampler) at the same size.

Each part runs in a fresh process, so its peak memory is its own: ``peak_bytes_in_use`` (JAX) and
``max_memory_allocated`` (torch) on GPU, the process's peak RSS on CPU (which also counts the
runtime, the libraries and compilation). XLA's buffer assignment of the compiled step gives a
second, backend-specific figure for the jaxalign parts: its temporary buffers (the step's working
memory, beside its arguments: weights, search state). ``--compile-only`` stops there, which is how
the SD1.5-size step can be sized on a machine too slow to run it; it lowers with abstract weights and prompt
encodings (shapes only), so a model larger than the host's memory (SD 3.5-medium with its T5-XXL) can be sized too.
Prints the hardware and one JSON line per part; BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib.util
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The parent process only starts the parts: keep it off the accelerator, whose memory JAX's GPU backend
# would reserve (evosax starts a backend on import) before the parts run. The parts get the caller's env.
PARTS_ENV = dict(os.environ)
CPUS_ENV = "JAXALIGN_BENCHMARK_CPUS"  # the CPUs a part runs on (see run_part)
if "--part" not in sys.argv:
    os.environ["JAX_PLATFORMS"] = "cpu"
elif os.environ.get(CPUS_ENV):
    # A part pins itself before jax and torch size their thread pools: pinning it from the parent would need a
    # fork of a multithreaded (JAX) process before exec, which can deadlock.
    os.sched_setaffinity(0, [int(cpu) for cpu in os.environ[CPUS_ENV].split(",")])

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

from jaxalign.config import default_config
from jaxalign.models import ATTENTION, EMBEDDED_DIR, init_model, load_model
from jaxalign.run import build, make_problem
from jaxalign.sampler import make_sampler

# Stable Diffusion 1.5's architecture (same FLOPs as the real model; weights are random).
SD15 = {
    "unet": {
        "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae": {
        "_class_name": "AutoencoderKL", "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "scaling_factor": 0.18215,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
        "projection_dim": 768, "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
    },
}  # fmt: skip


_CLIP_TEXT = {"model_type": "clip_text_model", "vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
# Stable Diffusion 3.5 medium's architecture (transformer with MMDiT-X blocks, CLIP-L, CLIP-G, T5-XXL, 16-channel VAE).
SD35_MEDIUM = {
    "transformer": {
        "_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
        "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm",
    },
    "vae": {
        "_class_name": "AutoencoderKL", "sample_size": 1024, "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False,
        "use_post_quant_conv": False, "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": {**_CLIP_TEXT, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
    "text_encoder_2": {**_CLIP_TEXT, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 1280, "intermediate_size": 5120,
                       "num_hidden_layers": 32, "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"},
    "text_encoder_3": {"architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
                       "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                       "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False},
    "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
}  # fmt: skip
# FLUX.1-dev's architecture (12B transformer with the guidance embedding, CLIP-L, T5-XXL, 16-channel VAE).
FLUX_DEV = {
    "transformer": {
        "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
    },
    "vae": {**SD35_MEDIUM["vae"], "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "text_encoder": {**_CLIP_TEXT, "architectures": ["CLIPTextModel"], "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
    "text_encoder_2": SD35_MEDIUM["text_encoder_3"],
    "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                  "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096},
}  # fmt: skip


def config_dir(name: str, configs: dict, family: str) -> Path:
    """A diffusers directory of ``family``'s layout with a size's configs and tokenizers (CLIP's shipped one; a small
    T5 one, as the real vocabulary cannot be downloaded), no weights; the embedded model's scheduler where the size
    names none."""
    from jaxalign.models import FAMILIES
    from jaxalign.testing import tiny_t5_tokenizer

    path = Path(tempfile.mkdtemp(prefix=f"jaxalign-{name}-"))
    atexit.register(shutil.rmtree, path, True)
    for component, config in configs.items():
        (path / component).mkdir()
        file = "scheduler_config.json" if component == "scheduler" else "config.json"
        (path / component / file).write_text(json.dumps(config))
    if "scheduler" not in configs:
        shutil.copytree(EMBEDDED_DIR / "scheduler", path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({"_class_name": FAMILIES[family].pipelines[0]}))
    for encoder, tokenizer in FAMILIES[family].text_folders:
        if configs[encoder]["model_type"] == "t5":
            tiny_t5_tokenizer().save_pretrained(path / tokenizer)
        else:
            shutil.copytree(EMBEDDED_DIR / "tokenizer", path / tokenizer)
    return path


def tiny_dir(variant: str) -> Path:
    """A tiny random pipeline of a layout (``jaxalign.testing.TINY_VARIANTS`` or a family's default), for dry runs."""
    from jaxalign.testing import TINY_VARIANTS, tiny_pytorch_pipeline

    path = Path(tempfile.mkdtemp(prefix=f"jaxalign-tiny-{variant}-"))
    atexit.register(shutil.rmtree, path, True)
    family, options = TINY_VARIANTS.get(variant, (variant, {}))
    tiny_pytorch_pipeline(family, path / "model", **options)
    return path / "model"


@dataclasses.dataclass(frozen=True)
class Size:
    """A benchmark size: its model directory and the job settings of the reference config it stands for.
    ``None`` keeps ``default_config()``'s value (the embedded model's job)."""

    model_dir: Callable[[], Path]
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    popsize: int = 16


SIZES = {
    "embedded": Size(lambda: EMBEDDED_DIR),  # the trained embedded UNet: a CPU-sized run, and sd15's dry run
    "sd15": Size(lambda: config_dir("sd15", SD15, "sd"), 512, 50),
    "sd35_medium": Size(lambda: config_dir("sd35_medium", SD35_MEDIUM, "sd3"), 512, 28, 4.5),  # the reference's configs/sd3.yaml
    "flux_dev": Size(lambda: config_dir("flux_dev", FLUX_DEV, "flux"), 1024, 30, 3.5, popsize=8),  # the reference's configs/flux-dev.yaml
    # Dry runs of the two transformer sizes on CPU: tiny random pipelines of the same layouts, same settings but size.
    "tiny_sd35": Size(lambda: tiny_dir("sd35"), 32, 4, 4.5, popsize=8),
    "tiny_flux": Size(lambda: tiny_dir("flux"), 32, 4, 3.5, popsize=8),
}


def model_dir_for(size: str) -> Path:
    return SIZES[size].model_dir()


def load_benchmark_model(model_dir: Path, dtype: str, abstract: bool = False):
    """(model, params): the trained embedded model, or seeded random (``abstract``: shapes only) weights for a
    config-only directory."""
    if model_dir == EMBEDDED_DIR:
        return load_model("embedded", dtype=dtype)
    return init_model(model_dir, dtype=dtype, abstract=abstract, on_device=True)  # SD 3.5's 8B weights: minutes to draw on the host


def peak_memory_bytes() -> int:
    """JAX's device peak on accelerators, the process's peak RSS on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else peak_rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_tflop_per_image(job, problem) -> float:
    """Model FLOPs of one image: one guided UNet evaluation (both CFG branches) per model call
    and one VAE decode, each from XLA's cost analysis of that piece lowered alone for one image. The
    lowered (backend-independent) program is analysed, not the compiled one: on GPU the compiled
    program's convolutions and matmuls are library calls that its cost analysis leaves out (an SD1.5-size
    image counted 13.9 TFLOP there, against 82.2 on CPU).
    The whole step's analysis cannot be used: it counts a loop's body once, whatever its trip count
    (the denoising scan, and the chunks of chunked attention or of ``decode_batch``), so the count is
    taken with standard attention and a single decode."""
    sampler = make_sampler(
        job.model.with_attention("standard"), job.config.scheduler, job.config.num_inference_steps, image_tokens=job.model.image_tokens(job.context.latent_shape)
    )
    x = jnp.zeros((1, *job.context.latent_shape), jnp.float32)
    unet = jax.jit(sampler.guided_output).lower(job.model_params, x, 0, problem.context, problem.uncond_context, job.config.guidance_scale)
    decode = jax.jit(sampler.decode).lower(job.model_params, x)
    flops = [_flops(lowered.cost_analysis()) for lowered in (unet, decode)]
    return (sampler.num_steps * flops[0] + flops[1]) / 1e12  # model calls: one more than the steps for pndm


def _flops(cost) -> float:
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def count_model_tflop_per_image(args, model_dir: Path) -> float:
    """:func:`model_tflop_per_image` of ``args``'s job, from shapes alone on this process's backend. The parent
    counts on the CPU and hands the count to the parts: jax 0.11's GPU backend gives no cost analysis of a lowered
    program (``None``; H200, 2026-12-04)."""
    job = build(job_config(args), load_benchmark_model(model_dir, args.dtype, abstract=True))
    problem, _ = jax.eval_shape(lambda params: make_problem(dataclasses.replace(job, model_params=params), job.prompts[0], 0), job.model_params)
    return model_tflop_per_image(job, problem)


def time_jaxalign(config, loaded, generations: int, peak_tflops: float | None, compile_only: bool = False, per_image: float | None = None) -> dict:
    """One generation of the job ``config`` describes; ``per_image``: the model TFLOP per image when counted
    already (:func:`count_model_tflop_per_image`). DNO's model FLOPs count its backward pass as
    twice the forward (the usual convention; the recomputation of checkpointed steps is not counted)."""
    job = build(config, loaded)
    if compile_only:  # shapes are enough: the weights may be abstract (see load_benchmark_model)
        problem, key = jax.eval_shape(lambda params: make_problem(dataclasses.replace(job, model_params=params), job.prompts[0], 0), job.model_params)
        state = jax.eval_shape(job.search.init, key, problem, job.search_params)
    else:
        problem, key = make_problem(job, job.prompts[0], 0)
        state = job.search.init(key, problem, job.search_params)
    start = time.perf_counter()
    compiled = job.search.step.lower(job.model_params, job.reward_params, problem, job.search_params, state).compile()
    compile_s = time.perf_counter() - start
    buffers = compiled.memory_analysis()
    per_image = per_image or model_tflop_per_image(job, problem)
    tflop = per_image * job.search.images_per_generation * (3 if config.method == "dno" else 1)
    result = {
        "part": f"jaxalign {config.method}",
        "attention": config.attention,
        "decode_batch": config.decode_batch,
        "denoise_batch": config.denoise_batch,
        "compile_s": round(compile_s, 2),
        "model_tflop_per_image": _significant(per_image),
        "model_tflop_per_generation": _significant(tflop),
        "xla_argument_gib": _significant(buffers.argument_size_in_bytes / 2**30),
        "xla_temp_gib": _significant(buffers.temp_size_in_bytes / 2**30),
    }
    if compile_only:
        return result
    state, report = job.search.start(job.model_params, job.reward_params, problem, job.search_params, state)  # generation 0
    jax.block_until_ready(report)
    seconds = []
    for _ in range(generations):
        start = time.perf_counter()
        state, report = compiled(job.model_params, job.reward_params, problem, job.search_params, state)
        jax.block_until_ready(report)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    result |= {
        "s_per_generation": round(median, 4),
        "images_per_s": round(job.search.images_per_generation / median, 3),
        "achieved_tflops": _significant(tflop / median),
        "peak_memory_gib": round(peak_memory_bytes() / 2**30, 3),
    }
    if peak_tflops:
        result["mfu"] = _significant(tflop / median / peak_tflops)
    return result


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def time_reference(model_dir: Path, config, generations: int, batch: int, searcher: str = "auto") -> dict:
    """The paper's loop: CoSyNE in PyTorch, diffusers' PyTorch pipeline in batches, per-image scoring.

    ``searcher``: ``"evotorch"`` (evotorch's ``Cosyne``, as the reference), ``"torch"`` (the same
    generation written here in plain torch, for machines where evotorch's ``ray`` dependency cannot be
    installed), or ``"auto"`` (evotorch when importable).
    """
    import torch

    from jaxalign.models import detect_family
    from jaxalign.rewards import jpeg_size_kb

    if searcher == "auto":
        searcher = "evotorch" if importlib.util.find_spec("evotorch") else "torch"
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the pinned CPUs, whatever torch would guess
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    pipe = reference_pipeline(model_dir, device, dtype)
    family = detect_family(model_dir)  # how the pipeline takes initial latents (Flux: packed tokens)
    vae = pipe.vae.config
    factor = 2 ** (len(vae.block_out_channels) - 1)
    latent_shape = (vae.latent_channels, config.height // factor, config.width // factor)
    prompt = config.prompts[0]

    evaluated = [0]  # images scored so far; CoSyNE scores the children and the permuted population each step

    def score(solutions: torch.Tensor) -> torch.Tensor:
        evaluated[0] += len(solutions)
        scores = []
        for i in range(0, len(solutions), batch):
            call = family.reference_call(pipe, solutions[i : i + batch].reshape(-1, *latent_shape).numpy())
            call["latents"] = torch.as_tensor(call["latents"]).to(device, dtype)
            with torch.no_grad():
                images = pipe(
                    [prompt] * len(call["latents"]), height=config.height, width=config.width, **call,
                    num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale, output_type="np",
                ).images  # fmt: skip
            scores.extend(-float(jpeg_size_kb(image)) for image in images)  # one image at a time
        return torch.tensor(scores)

    length = int(np.prod(latent_shape))
    if searcher == "evotorch":
        from evotorch import Problem
        from evotorch.algorithms import Cosyne

        problem = Problem("max", score, solution_length=length, initial_bounds=(-1.0, 1.0), vectorized=True)
        search = Cosyne(
            problem, popsize=config.popsize, tournament_size=2, mutation_stdev=0.1, mutation_probability=1.0, permute_all=True, elitism_ratio=0.01
        )
    else:
        search = TorchCosyne(score, config.popsize, length)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    search.step()  # warm-up (evotorch also scores its first population here)
    seconds, counts = [], []
    for _ in range(generations):
        before = evaluated[0]
        start = time.perf_counter()
        search.step()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        counts.append(evaluated[0] - before)
    median = statistics.median(seconds)
    images = statistics.median(counts)
    return {
        "part": f"reference (diffusers + {'evotorch Cosyne' if searcher == 'evotorch' else 'plain-torch CoSyNE'})",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "s_per_generation": round(median, 4),
        "images_per_generation": images,
        "images_per_s": round(images / median, 3),
        "peak_memory_gib": round((torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) / 2**30, 3),
    }


def reference_pipeline(model_dir: Path, device: str, dtype):
    """diffusers' PyTorch pipeline that ``model_dir``'s ``model_index.json`` names, each component built from its
    config with seeded random weights (the sizes' directories have configs only) on ``device`` in ``dtype``;
    components the directory lacks (safety checker, image encoder) are left out."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    pipeline_class = getattr(diffusers, json.loads((model_dir / "model_index.json").read_text())["_class_name"])
    components = {}
    for name, parameter in inspect.signature(pipeline_class.__init__).parameters.items():
        folder = model_dir / name
        if (folder / "scheduler_config.json").is_file():
            config = json.loads((folder / "scheduler_config.json").read_text())
            components[name] = getattr(diffusers, config["_class_name"]).from_config(config)
        elif (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            with torch.device(device):  # initialised where it runs: a 12B transformer in float32 would not fit most hosts
                if "_class_name" in config:
                    module = getattr(diffusers, config["_class_name"]).from_config(config)
                else:
                    module = getattr(transformers, config["architectures"][0])(transformers.AutoConfig.from_pretrained(folder))
            components[name] = module.to(dtype).eval()
        elif folder.is_dir():
            components[name] = transformers.AutoTokenizer.from_pretrained(folder)
        elif name == "requires_safety_checker":
            components[name] = False
        elif name != "self" and parameter.default is inspect.Parameter.empty:
            components[name] = None  # SD's safety checker and feature extractor
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TorchCosyne:
    """One CoSyNE generation (Gomez et al. 2008) as evotorch's ``Cosyne`` runs it with the reference's
    settings, in plain torch: popsize/4 best as parents, two-way tournaments picking popsize/2 of
    them, one-point crossover into popsize/2 children, Gaussian mutation (std 0.1) of every gene,
    every gene permuted across the whole population; the children and the permuted population are
    scored (1.5 x popsize images) and the best popsize of them kept. The same images per generation
    as evotorch, so the same work for the pipeline; only the bookkeeping differs."""

    def __init__(self, score: Callable, popsize: int, length: int, mutation_std: float = 0.1, tournament_size: int = 2):
        import torch

        self.torch, self.score, self.popsize = torch, score, popsize
        self.mutation_std, self.tournament_size = mutation_std, tournament_size
        self.population = torch.rand(popsize, length) * 2 - 1  # evotorch's initial_bounds (-1, 1)
        self.fitness = None

    def step(self) -> None:
        torch = self.torch
        if self.fitness is None:
            self.fitness = self.score(self.population)
        n, length = self.population.shape
        order = torch.argsort(self.fitness, descending=True)
        parents, parent_fitness = self.population[order[: n // 4]], self.fitness[order[: n // 4]]
        contenders = torch.randint(len(parents), (n // 2, self.tournament_size))
        winners = contenders.gather(1, parent_fitness[contenders].argmax(1, keepdim=True)).squeeze(1)
        first, second = parents[winners].view(n // 4, 2, length).unbind(1)
        before_cut = torch.arange(length) < torch.randint(1, length, (n // 4, 1))
        children = torch.cat([torch.where(before_cut, first, second), torch.where(before_cut, second, first)])
        children = children + self.mutation_std * torch.randn_like(children)
        permuted = self.population.gather(0, torch.argsort(torch.rand(n, length), dim=0))
        candidates = torch.cat([children, permuted])
        fitness = self.score(candidates)
        keep = torch.topk(fitness, n).indices
        self.population, self.fitness = candidates[keep], fitness[keep]


# Parts a run can measure; each runs in its own process (see ``run_part``).
JAXALIGN, EA_BRIGHTNESS, DNO, REFERENCE = "jaxalign", "evolution-brightness", "dno", "reference"


def job_config(args):
    """The job config of ``args``'s size and part."""
    config = default_config()
    config.dtype = args.dtype
    config.checkpoint_every = 0
    config.attention = args.attention
    config.decode_batch = args.decode_batch
    config.denoise_batch = args.denoise_batch
    config.rewards = {"jpeg_compressibility": 1.0}  # the reference's scorer, on both sides
    size = SIZES[args.size]
    config.popsize = args.popsize or size.popsize
    config.height = config.width = size.height or config.height
    config.num_inference_steps = args.num_inference_steps or size.num_inference_steps or config.num_inference_steps
    config.guidance_scale = size.guidance_scale or config.guidance_scale
    if args.part in (EA_BRIGHTNESS, DNO):
        # Same reward on both sides: DNO needs a differentiable one.
        config.method = "dno" if args.part == DNO else "evolution"
        config.rewards = {"brightness": 1.0}
    return config


def measure(args) -> dict:
    """One part, in this process, with the hardware it ran on."""
    # The CPU this part may use (the parent pinned it, see ``run_part``) and how busy the machine was as it started:
    # a contended CPU once made the reference part 89x slower, so every line says both.
    cpu = {"cpu_threads": len(os.sched_getaffinity(0)), "load_average_1m": round(os.getloadavg()[0], 2)}
    config, model_dir = job_config(args), Path(args.model_dir) if args.model_dir else model_dir_for(args.size)
    if args.part == REFERENCE:
        result = time_reference(model_dir, config, args.generations, args.reference_batch, args.reference_searcher)
    else:
        loaded = load_benchmark_model(model_dir, args.dtype, abstract=args.compile_only)
        result = time_jaxalign(config, loaded, args.generations, args.peak_tflops, args.compile_only, args.model_tflop_per_image)
        result |= {"device": jax.devices()[0].device_kind}
    return result | cpu | {"reward": next(iter(config.rewards))}


def run_part(part: str, argv: list[str], threads: int | None) -> dict:
    """Runs one part in a fresh process, so that its peak memory is its own, pinned to ``threads`` CPUs (all
    this process may use when ``None``), so both frameworks get the same cores whatever they would guess; returns
    its JSON line, or its exit status when it failed (e.g. out of device memory), so the other parts still run."""
    env = dict(PARTS_ENV)
    if part == REFERENCE:
        env["JAX_PLATFORMS"] = "cpu"  # jaxalign is imported only for the JPEG scorer: the GPU stays torch's
    env[CPUS_ENV] = ",".join(map(str, sorted(os.sched_getaffinity(0))[:threads]))
    child = subprocess.run([sys.executable, __file__, *argv, "--part", part], env=env, stdout=subprocess.PIPE, text=True)
    lines = child.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else {"part": part, "failed": f"exit status {child.returncode} (its stderr is above)"}
    print(json.dumps(result), flush=True)
    return result


def summarise(results: dict[str, dict], popsize: int, on_gpu: bool, peak_tflops: float | None) -> list[str]:
    """The ratios the issue's targets are stated in."""
    lines = []
    results = {part: result for part, result in results.items() if "failed" not in result}
    ours = results.get(JAXALIGN, {})
    if peak_tflops and "s_per_generation" in ours:
        limit = ours["model_tflop_per_image"] / peak_tflops
        lines.append(
            f"jaxalign: {ours['s_per_generation'] / popsize:.4g} s per image, {ours['s_per_generation'] / popsize / limit:.2f}x the compute "
            f"limit ({ours['model_tflop_per_image']:.3g} TFLOP per image at {peak_tflops:g} TFLOP/s = {limit:.4g} s)"
        )
    if REFERENCE in results and "s_per_generation" in ours:
        theirs = results[REFERENCE]
        reference_tflops = theirs["images_per_s"] * ours["model_tflop_per_image"]
        lines.append(
            f"jaxalign vs reference: {theirs['s_per_generation'] / ours['s_per_generation']:.2f}x faster per generation "
            f"({popsize} images vs {theirs['images_per_generation']:g}), {ours['images_per_s'] / theirs['images_per_s']:.2f}x images/s, "
            f"peak memory {ours['peak_memory_gib']:.3g} vs {theirs['peak_memory_gib']:.3g} GiB ({'device' if on_gpu else 'process RSS'}); "
            f"reference {reference_tflops:.3g} model TFLOP/s" + (f" (MFU {reference_tflops / peak_tflops:.3f})" if peak_tflops else "")
        )
    if EA_BRIGHTNESS in results and DNO in results:
        ea, dno = results[EA_BRIGHTNESS], results[DNO]
        parts = [f"{1 - ea['xla_temp_gib'] / dno['xla_temp_gib']:.1%} less XLA working memory"]
        if "s_per_generation" in ea:
            parts.insert(0, f"{1 - ea['s_per_generation'] / dno['s_per_generation']:.1%} less time per step")
            parts.append(f"{1 - ea['peak_memory_gib'] / dno['peak_memory_gib']:.1%} less peak {'device memory' if on_gpu else 'process RSS'}")
        lines.append("EA vs DNO (brightness): " + ", ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="embedded", help="tiny_*: CPU dry runs of the transformer sizes")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--popsize", type=int, help="default: the size's reference config (16; 8 for flux_dev)")
    parser.add_argument("--num-inference-steps", type=int)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--attention", choices=tuple(ATTENTION), default=default_config().attention, help="the UNet's attention (jaxalign parts)")
    parser.add_argument("--decode-batch", type=int, default=0, help="decode this many images at a time (0: all at once)")
    parser.add_argument("--denoise-batch", type=int, default=0, help="denoise this many images at a time (0: all at once)")
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference loop")
    parser.add_argument("--reference-batch", type=int, default=4)
    parser.add_argument("--reference-searcher", choices=("auto", "evotorch", "torch"), default="auto", help="evotorch's Cosyne, or the plain-torch one where evotorch cannot be installed")
    parser.add_argument("--dno", action="store_true", help="also time one DNO step against one EA generation (brightness reward)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU estimate")
    parser.add_argument("--compile-only", action="store_true", help="compile the jaxalign steps and report FLOPs and XLA's memory, without running them")
    parser.add_argument("--threads", type=int, help="pin each part to this many CPUs (default: all this process may use)")
    parser.add_argument("--part", choices=(JAXALIGN, EA_BRIGHTNESS, DNO, REFERENCE), help=argparse.SUPPRESS)
    parser.add_argument("--model-tflop-per-image", type=float, help=argparse.SUPPRESS)  # the parent's count, for the parts
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)  # the parent's model directory, built once for all parts
    args = parser.parse_args()
    if args.part:
        print(json.dumps(measure(args)), flush=True)
        return

    config = job_config(args)
    print(f"size {args.size}: {config.height}x{config.width}, {config.num_inference_steps} {config.scheduler} steps, CFG {config.guidance_scale}, popsize {config.popsize}, {args.dtype}")
    parts = [JAXALIGN] + [REFERENCE] * (args.reference and not args.compile_only) + [EA_BRIGHTNESS, DNO] * args.dno
    model_dir = model_dir_for(args.size)
    argv = sys.argv[1:] + ["--model-dir", str(model_dir), "--model-tflop-per-image", repr(count_model_tflop_per_image(args, model_dir))]
    results = {part: run_part(part, argv, args.threads) for part in parts}
    device = next((r["device"] for r in results.values() if "device" in r), "unknown")
    print(f"device: {device}, {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, jax {jax.__version__}")
    for line in summarise(results, config.popsize, device != "cpu", args.peak_tflops):
        print(line)


if __name__ == "__main__":
    main()
