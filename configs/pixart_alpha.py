"""PixArt-α's LCM-distilled 1024 model, as the reference's ``configs/pixart-alpha.yaml`` (its ``pixart-alpha``
pipeline runs ``PixArt-alpha/PixArt-LCM-XL-2-1024-MS``): 1024x1024, 4 steps of the model's own LCM scheduler
(``auto``), guidance 0 (diffusers' pipelines then take the conditional prediction alone), CoSyNE at the reference's
defaults with popsize 16 on the initial noise for 15 generations, maximising ImageReward; seed 42, the two prompts
of the yaml (its dataset is the 60 Open Image Preferences prompts: ``--config.prompt_file``). The reference runs
float16, jaxalign bfloat16. For the DPM-Solver++ PixArt-α base model: ``--config.model=PixArt-alpha/PixArt-XL-2-1024-MS
--config.num_inference_steps=20 --config.guidance_scale=4.5``.

The weights are read from the local Hugging Face cache (nothing is downloaded) or from a local diffusers
directory given with ``--config.model``; ImageReward needs its extra and files (README, Learned rewards):
    jaxalign run --config configs/pixart_alpha.py --config.reward_paths.imagereward="{'path': '/models/ImageReward.pt', 'med_config': '/models/med_config.json'}" --workdir runs/pixart_alpha
"""

from configs import flux_dev


def get_config():
    config = flux_dev.get_config()
    config.model = "PixArt-alpha/PixArt-LCM-XL-2-1024-MS"
    config.model_family = "pixart_alpha"
    config.seed = 42
    config.steps = 15
    config.num_inference_steps = 4
    config.guidance_scale = 0.0
    config.popsize = 16
    config.method_params = {}  # CoSyNE at the reference's defaults (tournament 2, mutation 0.1 with probability 1, elitism 0.01)
    return config
