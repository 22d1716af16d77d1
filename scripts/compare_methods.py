"""Every alignment method on one config at equal NFE budgets (the table in BENCHMARKS.md).

    python scripts/compare_methods.py --config configs/red_pixels.py --workdir runs/compare_methods --budget 1760

Runs each method with its official defaults until its counted UNet evaluations reach ``--budget``
(generation 0 included) and reports the best fitness reached within the budget, from each run's own
``metrics.jsonl`` (NFE, decoded images and backward passes as the runs counted them). Methods whose
generation costs more than the config's popsize of images (SVDD's candidates, DSearch's beams) run
with the largest popsize at most the config's for which ``--min-generations`` generations fit in the
budget (DSearch's popsize a multiple of its oversampling). Prints the hardware, writes ``methods.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import jax

from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.methods import METHODS
from jaxalign.models import load_model
from jaxalign.run import build, run
from jaxalign.sweep import fit_to_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=1760, help="NFE budget per method, generation 0 included")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--min-generations", type=int, default=3, help="generations after generation 0 a method must fit in the budget")
    args, overrides = parser.parse_known_args()
    base = load_config(args.config, overrides)
    print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}")
    loaded = load_model(base.model, dtype=base.dtype)
    rows = []
    for method in args.methods.split(","):
        config = load_config(args.config, overrides)
        config.method = method
        try:
            config = fit_to_budget(config, loaded, args.budget, args.min_generations)
        except JaxalignError as error:
            print(f"{method}: skipped ({error})")
            continue
        # One generation more than planned: methods with random costs (DSearch) may fit it; the table keeps what fits.
        config.steps += 1
        job = build(config, loaded)
        start = time.perf_counter()
        (summary,) = run(job, args.workdir / method, progress=False, overwrite=True)  # a re-run replaces the last one
        seconds = time.perf_counter() - start
        lines = [json.loads(x) for x in (args.workdir / method / "metrics.jsonl").read_text().splitlines()]
        within = [line for line in lines if line["nfe"] <= args.budget]
        row = {
            "method": method,
            "popsize": config.popsize,
            "generations": len(within) - 1,
            "nfe": within[-1]["nfe"],
            "images": within[-1]["images"],
            "vjp_nfe": within[-1]["vjp_nfe"],
            "baseline": summary["baseline_fitness"],
            "best_at_budget": within[-1]["best_fitness"],
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    with (args.workdir / "methods.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
