"""PixArt-Σ XL 1024, as the reference's ``configs/pixart-sig.yaml``: 1024x1024, 25 steps of the model's own
DPM-Solver++ (``auto``), CFG 4.5, sep-CMA-ES (``std_init`` 1.5; evotorch's default popsize 4 + ⌊3 ln 20⌋ = 12 for
the 20 numbers of the space) over the SVD-bounded channel rotation of one noise (``mean_scale`` 0.01, ``bound``
0.1) for 30 generations, maximising the yaml's active fitness sum: relative luminance + JPEG size in kB (the
reference maximises its ``jpeg_compressibility``, the size, here) + 0.1 CLIP ViT-B/32 score + ImageReward; seed
53435. The reference runs float16, jaxalign bfloat16; its prompts are DrawBench's (the two listed are the yaml's
own; ``--config.prompt_file=hf:sayakpaul/drawbench#Prompts`` reads DrawBench from the local datasets cache).
sep-CMA-ES starts at the identity rotation; the reference's ``center_init: null`` starts it from a U[-1, 1] draw
(README, differences).

The weights are read from the local Hugging Face cache (nothing is downloaded) or from a local diffusers
directory given with ``--config.model``; CLIP and ImageReward need their files (README, Learned rewards):
    jaxalign run --config configs/pixart_sigma.py --config.reward_paths.imagereward="{'path': '/models/ImageReward.pt', 'med_config': '/models/med_config.json'}" --workdir runs/pixart_sigma
"""

from configs import flux_dev


def get_config():
    config = flux_dev.get_config()
    config.model = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    config.model_family = "pixart_sigma"
    config.seed = 53435
    config.steps = 30
    config.num_inference_steps = 25
    config.guidance_scale = 4.5
    config.rewards = {"relative_luminance": 1.0, "jpeg_size_kb": 1.0, "clip": 0.1, "imagereward": 1.0}
    config.reward_paths = {"clip": "openai/clip-vit-base-patch32"}
    config.method_params = {
        "strategy": "Sep_CMA_ES",
        "strategy_params": {"std_init": 1.5},
        "space": "svd_rotation",
        "space_params": {"mean_scale": 0.01, "bound": 0.1},
    }
    config.popsize = 12
    return config
