"""Fitness against NFE budget: CoSyNE, SNES, Sep_CMA_ES, PGPE, best-of-N and zero-order search on the
embedded model, the first 2 Open Image Preferences prompts, 3 seeds, three weight-free rewards, each
strategy with the reference's defaults.

Every strategy and method spends popsize x num_inference_steps NFE per generation after generation 0
(which costs the distribution strategies only the baseline), so the sweep's plots (median and
interquartile range of best fitness against NFE, one per reward) compare them at equal budgets; 11
generations take every run past 1760 NFE. Run from the repository root, with ``shared/`` beside it:

    python scripts/sweep.py --config configs/sweep_budget_curves.py --workdir runs/sweep_budget_curves
"""

import csv
from pathlib import Path

from configs import red_pixels
from jaxalign.sweep import default_sweep_config

PROMPTS = Path("../shared/data/open_image_preferences_60.csv")


def get_config():
    config = default_sweep_config()
    config.base = red_pixels.get_config()
    with PROMPTS.open(newline="", encoding="utf-8") as handle:
        config.base.prompts = [row["prompt"] for row in csv.DictReader(handle)][:2]
    config.base.batch_prompts = True
    config.base.steps = 11
    config.methods = [
        *({"name": "evolution", "params": {"strategy": name}, "label": name} for name in ("CoSyNE", "SNES", "Sep_CMA_ES", "PGPE")),
        {"name": "random"},
        {"name": "zero_order"},
    ]
    config.seeds = [0, 1, 2]
    config.reward_sets = [{"jpeg_compressibility": 1.0}, {"brightness": 1.0}, {"saturation": 1.0}]
    return config
