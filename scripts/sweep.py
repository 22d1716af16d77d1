"""Run a sweep config: every prompt x strategy x space x seed x reward set, then the aggregate CSVs and plots.

    python scripts/sweep.py --config configs/sweep.py --workdir runs/sweep [--config.<field>=<value> ...]

Re-running the same command skips finished runs and resumes interrupted ones.
"""

import argparse
import sys

from jaxalign.errors import JaxalignError
from jaxalign.sweep import load_sweep_config, run_sweep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--progress", action="store_true")
    args, overrides = parser.parse_known_args()
    try:
        config = load_sweep_config(args.config, overrides)
        result = run_sweep(config, args.workdir, progress=args.progress)
    except JaxalignError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 2
    print(f"{result['runs']} runs in {result['jobs']} jobs ({result['ran']} run, {result['skipped']} skipped) in {result['wall_s']} s; "
          f"results in {args.workdir}/runs.csv")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
