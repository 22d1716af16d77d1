"""FLUX.1-dev, as the reference's ``configs/flux-dev.yaml``: 1024x1024, 30 flow-matching Euler steps on the
pipeline's sigmas with the model's dynamic shift (``auto``), the guidance scale 3.5 embedded in the transformer (one
pass per step), CoSyNE with popsize 8 and its Flux settings (tournaments of 8, mutation probability 0.5 and std 0.1,
elitism 0.25) on the initial noise for 10 generations, ImageReward as the objective, seed 5324; the reference runs
float16, jaxalign bfloat16. Its prompts are DrawBench's; the two listed here are the yaml's own, and
``--config.prompt_file=hf:sayakpaul/drawbench#Prompts`` takes DrawBench from the local datasets cache.

The weights are read from the local Hugging Face cache (nothing is downloaded) or from a local diffusers
directory given with ``--config.model``; ImageReward needs its extra and files (README, Learned rewards):
    jaxalign run --config configs/flux_dev.py --config.reward_paths.imagereward="{'path': '/models/ImageReward.pt', 'med_config': '/models/med_config.json'}" --workdir runs/flux_dev
"""

from configs import red_pixels


def get_config():
    config = red_pixels.get_config()
    config.model = "black-forest-labs/FLUX.1-dev"
    config.model_family = "flux"
    config.prompts = [
        "A bustling manga street, devoid of vehicles, detailed with vibrant colors and dynamic line work, characters in the "
        "background adding life and movement, under a soft golden hour light, with rich textures and a lively atmosphere, "
        "high resolution, sharp focus",
        "Alice in a vibrant, dreamlike digital painting inside the Nemo Nautilus submarine.",
    ]
    config.seed = 5324
    config.steps = 10
    config.height = config.width = 1024
    config.scheduler = "auto"
    config.num_inference_steps = 30
    config.guidance_scale = 3.5
    config.rewards = {"imagereward": 1.0}
    config.popsize = 8
    config.method_params = {"strategy_params": {"tournament_size": 8, "mutation_probability": 0.5, "mutation_stdev": 0.1, "permute_all": True, "elitism_ratio": 0.25}}
    config.dtype = "bfloat16"
    return config
