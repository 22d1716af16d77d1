"""Speed and memory of one generation: jaxalign against a PyTorch reference loop, and EA against DNO.

    python scripts/benchmark_speed.py --size embedded                      # CPU, the tiny model
    python scripts/benchmark_speed.py --size sd15 --dtype bfloat16         # GPU, SD1.5-size random weights

jaxalign: one compiled generation (CoSyNE, the default job's reward), timed after a warm-up with
``block_until_ready``, median of ``--generations``; compile time apart; FLOPs from XLA's cost
analysis of the compiled step, and an MFU estimate against ``--peak-tflops`` when given.
Reference: diffusers' PyTorch ``StableDiffusionPipeline`` built from the same configs with random
weights (fp16 on GPU, fp32 on CPU), evotorch's ``Cosyne`` asking for the population, the
population pushed through the pipeline in batches of ``--reference-batch`` and scored image by
image, as the paper's reference implementation does. DNO (``--dno``): one jaxalign optimisation
step (gradient through the sampler) at the same size.

Peak memory: ``peak_bytes_in_use`` (JAX) and ``max_memory_allocated`` (torch) on GPU; on CPU the
process's peak RSS after each part (RSS only grows, so a later part's peak includes the earlier).
Prints the hardware and one JSON line per part; BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxalign.config import default_config
from jaxalign.model import EMBEDDED_DIR, init_model, load_model
from jaxalign.run import build, make_problem

# Stable Diffusion 1.5's architecture (same FLOPs as the real model; weights are random).
SD15 = {
    "unet": {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae": {
        "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "scaling_factor": 0.18215,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
        "projection_dim": 768, "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
    },
}  # fmt: skip


def sd15_config_dir() -> Path:
    """A diffusers directory with SD1.5's configs, the embedded scheduler and CLIP tokenizer, no weights."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="jaxalign-sd15-"))
    for component, config in SD15.items():
        (path / component).mkdir()
        (path / component / "config.json").write_text(json.dumps(config))
    for item in ("scheduler", "tokenizer"):
        shutil.copytree(EMBEDDED_DIR / item, path / item)
    shutil.copy(EMBEDDED_DIR / "model_index.json", path / "model_index.json")
    return path


def peak_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_jaxalign(config, loaded, generations: int, peak_tflops: float | None) -> dict:
    job = build(config, loaded)
    problem, key = make_problem(job, job.prompts[0], 0)
    state = job.search.init(key, problem, job.search_params)
    start = time.perf_counter()
    compiled = job.search.step.lower(job.model_params, problem, job.search_params, state).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
    state, report = compiled(job.model_params, problem, job.search_params, state)  # generation 0
    jax.block_until_ready(report)
    seconds = []
    for _ in range(generations):
        start = time.perf_counter()
        state, report = compiled(job.model_params, problem, job.search_params, state)
        jax.block_until_ready(report)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    result = {
        "part": f"jaxalign {config.method}",
        "compile_s": round(compile_s, 2),
        "s_per_generation": round(median, 4),
        "images_per_s": round(config.popsize / median, 3),
        "step_tflop": round(flops / 1e12, 4),
        "achieved_tflops": round(flops / median / 1e12, 3),
        "peak_memory_gib": round(peak_memory_bytes() / 2**30, 3),
    }
    if peak_tflops:
        result["mfu"] = round(flops / median / 1e12 / peak_tflops, 4)
    return result


def time_reference(model_dir: Path, config, generations: int, batch: int) -> dict:
    """The paper's loop: evotorch Cosyne, diffusers PyTorch pipeline in batches, per-image scoring."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from evotorch import Problem
    from evotorch.algorithms import Cosyne
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from jaxalign.rewards import jpeg_size_kb

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    read = lambda c: {k: v for k, v in json.loads((model_dir / c / "config.json").read_text()).items() if not k.startswith("_")}  # noqa: E731
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**_accepted(AutoencoderKL, read("vae"))),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(model_dir / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"),
        unet=UNet2DConditionModel(**_accepted(UNet2DConditionModel, read("unet"))),
        scheduler=DDIMScheduler.from_pretrained(model_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latent_shape = (4, config.height // factor, config.width // factor)
    prompt = config.prompts[0]

    evaluated = [0]  # images scored so far; evotorch's Cosyne scores elites, children and permuted members each step

    def score(solutions: torch.Tensor) -> torch.Tensor:
        evaluated[0] += len(solutions)
        scores = []
        for i in range(0, len(solutions), batch):
            latents = solutions[i : i + batch].reshape(-1, *latent_shape).to(device, dtype)
            with torch.no_grad():
                images = pipe(
                    [prompt] * len(latents), height=config.height, width=config.width, latents=latents,
                    num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale, output_type="np",
                ).images  # fmt: skip
            scores.extend(-float(jpeg_size_kb(image)) for image in images)  # one image at a time
        return torch.tensor(scores)

    problem = Problem("max", score, solution_length=int(np.prod(latent_shape)), initial_bounds=(-1.0, 1.0), vectorized=True)
    searcher = Cosyne(
        problem, popsize=config.popsize, tournament_size=2, mutation_stdev=0.1, mutation_probability=1.0, permute_all=True, elitism_ratio=0.01
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    searcher.step()  # warm-up
    seconds, counts = [], []
    for _ in range(generations):
        before = evaluated[0]
        start = time.perf_counter()
        searcher.step()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        counts.append(evaluated[0] - before)
    median = statistics.median(seconds)
    images = statistics.median(counts)
    return {
        "part": "reference (diffusers + evotorch Cosyne)",
        "s_per_generation": round(median, 4),
        "images_per_generation": images,
        "images_per_s": round(images / median, 3),
        "peak_memory_gib": round((torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 3),
    }


def _accepted(cls, config: dict) -> dict:
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("embedded", "sd15"), default="embedded")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--popsize", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference loop")
    parser.add_argument("--reference-batch", type=int, default=4)
    parser.add_argument("--dno", action="store_true", help="also time one DNO step (brightness reward)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU estimate")
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind}, {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, jax {jax.__version__}")
    config = default_config()
    config.popsize = args.popsize
    config.dtype = args.dtype
    config.checkpoint_every = 0
    if args.size == "sd15":
        model_dir = sd15_config_dir()
        loaded = init_model(model_dir, dtype=args.dtype)
        config.height = config.width = 512
        config.num_inference_steps = args.num_inference_steps or 50
        config.rewards = {"jpeg_compressibility": 1.0}
    else:
        model_dir = EMBEDDED_DIR
        loaded = load_model("embedded", dtype=args.dtype)
        config.num_inference_steps = args.num_inference_steps or config.num_inference_steps
    print(f"size {args.size}: {config.height}x{config.width}, {config.num_inference_steps} DDIM steps, CFG {config.guidance_scale}, popsize {config.popsize}, {args.dtype}")
    results = [time_jaxalign(config, loaded, args.generations, args.peak_tflops)]
    print(json.dumps(results[-1]), flush=True)
    if args.dno:
        # Same reward on both sides: DNO needs a differentiable one.
        for method in ("evolution", "dno"):
            part = config.copy_and_resolve_references()
            part.method, part.rewards = method, {"brightness": 1.0}
            results.append(time_jaxalign(part, loaded, args.generations, args.peak_tflops) | {"reward": "brightness"})
            print(json.dumps(results[-1]), flush=True)
    if args.reference:
        results.append(time_reference(model_dir, config, args.generations, args.reference_batch))
        print(json.dumps(results[-1]), flush=True)
        ours, theirs = results[0], results[-1]
        print(
            f"jaxalign vs reference: {theirs['s_per_generation'] / ours['s_per_generation']:.2f}x faster per generation "
            f"({config.popsize} images vs {theirs['images_per_generation']:g}), {ours['images_per_s'] / theirs['images_per_s']:.2f}x images/s"
        )
    if args.dno:
        ea, dno = results[1], results[2]
        memory = (
            f", {1 - ea['peak_memory_gib'] / dno['peak_memory_gib']:.1%} less peak memory"
            if jax.devices()[0].platform == "gpu"
            else " (peak RSS is cumulative on CPU, so no memory comparison)"
        )
        print(f"EA vs DNO (brightness): {1 - ea['s_per_generation'] / dno['s_per_generation']:.1%} less time per step{memory}")


if __name__ == "__main__":
    main()
