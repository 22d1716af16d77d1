"""DAS (Kim et al. 2025) as its official Stable Diffusion 1.5 runs: krafton-ai/DAS ``config/sd.py`` on top of
``config/general.py``. SD 1.5, 100 DDIM steps with eta 1, classifier-free guidance 5.0, 4 particles, SSP
resampling below ESS 0.5, exponential tempering with gamma 0.008, and the KL coefficient alpha of each reward:

    jaxalign run --config configs/das_sd15.py:aesthetic --workdir runs/das_sd15_aesthetic   # alpha 0.005
    jaxalign run --config configs/das_sd15.py:clip --workdir runs/das_sd15_clip             # alpha 0.01, 20 x cosine

The official prompts are the DAS repository's files (``assets/eval_simple_animals.txt`` for aesthetic,
``assets/hps_v2_all_eval.txt`` for CLIP): ``--config.prompt_file=DAS/assets/eval_simple_animals.txt``. One
generation after the baseline is one SMC run per prompt, as the official evaluation samples once per prompt.
At fewer steps, keep lambda's saturation point with ``jaxalign.methods.das.tempering_gamma_for(steps)`` (README).
The official ``multi`` run weighs aesthetic by ``aes_weight`` 1.0 and CLIP by 1 - 1.0, so it is the aesthetic run;
``pick`` scores PickScore's plain cosine at alpha 1e-4, where jaxalign's ``pickscore`` multiplies the cosine by
the model's logit scale: use ``method_params.alpha`` 1e-4 times that scale.
"""

from configs import sd15

# The official KL coefficient (config.smc.kl_coeff) and jaxalign's reward weights for each official reward_fn.
OFFICIAL_RUNS = {
    "aesthetic": ({"aesthetic": 1.0}, 0.005),
    "clip": ({"clip": 0.2}, 0.01),  # the official reward is 20 x cosine; jaxalign's clip is 100 x cosine
}


def get_config(reward: str = "aesthetic"):
    if reward not in OFFICIAL_RUNS:
        raise ValueError(f"unknown DAS run {reward!r}; valid: {', '.join(OFFICIAL_RUNS)}")
    rewards, alpha = OFFICIAL_RUNS[reward]
    config = sd15.get_config()
    config.prompts = ["cat"]
    config.scheduler = "ddim"
    config.num_inference_steps = 100
    config.guidance_scale = 5.0
    config.method = "das"
    config.popsize = 4
    config.steps = 1
    config.rewards = rewards
    if "aesthetic" in rewards:
        config.reward_paths = {"aesthetic": {"path": "sac+logos+ava1-l14-linearMSE.pth", "clip": "openai/clip-vit-large-patch14"}}
    config.method_params = {"alpha": alpha, "tempering_gamma": 0.008, "ess_threshold": 0.5, "eta": 1.0, "resampling": "ssp"}
    return config
