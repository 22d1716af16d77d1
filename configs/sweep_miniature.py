"""The paper's method comparison in miniature (issue 17): prompt following on the embedded model.

24 prompts whose (shape, colour, background) combination was held out of the generator's and the tiny CLIP's
training (the first 24 of ``shapes.HELD_OUT`` in sorted order; sizes alternate and positions cycle, so each
prompt names all five attributes), 3 seeds, every method and EA strategy, the tiny CLIP as the reward, and the
same budget of 880 counted UNet evaluations per run (generation 0 included): popsize 8 gives the population
methods 10 generations, DNO 5 (its backward pass recomputes the forward one), while SVDD (4 particles) and
DSearch (5 beams) fit one generation. The 24 prompts of a job are denoised together in one batch.

Run from the repository root, then re-score and judge, then tabulate:

    python scripts/sweep.py --config configs/sweep_miniature.py --workdir runs/sweep_miniature
    jaxalign eval --workdir runs/sweep_miniature
    python scripts/method_table.py --workdir runs/sweep_miniature
"""

from configs import default
from jaxalign import shapes
from jaxalign.sweep import default_sweep_config

STRATEGIES = ("CoSyNE", "SNES", "Sep_CMA_ES", "PGPE")  # evolution's, each a method entry labelled by its name
METHODS = ("random", "zero_order", "dno", "dno_hybrid", "svdd", "dsearch", "das")


def held_out_prompts(count: int = 24) -> list[str]:
    positions = list(shapes.POSITIONS)
    triples = sorted(shapes.HELD_OUT)[:count]
    return [
        shapes.caption(shapes.Attributes(shape, colour, background, shapes.SIZES[i % 2], positions[i % len(positions)]))
        for i, (shape, colour, background) in enumerate(triples)
    ]


def get_config():
    config = default_sweep_config()
    config.base = default.get_config()
    config.base.prompts = held_out_prompts()
    config.base.popsize = 8
    config.base.batch_prompts = True
    config.base.compilation_cache_dir = "xla-cache"  # inside the sweep's workdir: the seeds of a method share programs
    config.methods = [{"name": "evolution", "params": {"strategy": name}, "label": name} for name in STRATEGIES] + [{"name": name} for name in METHODS]
    config.seeds = [0, 1, 2]
    config.reward_sets = [{"clip": 1.0}]
    config.nfe_budget = 880
    return config
