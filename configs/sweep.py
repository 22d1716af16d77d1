"""A 2 x 2 x 2 sweep on the embedded model: two prompts x CoSyNE and SNES x two seeds, compressibility.

Run:
    python scripts/sweep.py --config configs/sweep.py --workdir runs/sweep
"""

from configs import red_pixels
from jaxalign.sweep import default_sweep_config


def get_config():
    config = default_sweep_config()
    config.base = red_pixels.get_config()
    config.base.prompts = ["a red circle on a blue background", "a small green square, top left"]
    config.base.compilation_cache_dir = "xla-cache"  # inside the sweep's workdir; reused by callback-free rewards (not jpeg)
    config.methods = [
        {"name": "evolution", "params": {"strategy": "CoSyNE"}, "label": "CoSyNE"},
        {"name": "evolution", "params": {"strategy": "SNES", "strategy_params": {"std_init": 0.3}}, "label": "SNES"},
    ]
    config.seeds = [0, 1]
    config.reward_sets = [{"jpeg_compressibility": 1.0}]
    return config
