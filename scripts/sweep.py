"""Run a sweep config: every prompt x method entry x seed x reward set, then the aggregate CSVs and plots.

    python scripts/sweep.py --config configs/sweep.py --workdir runs/sweep [--shard i/n] [--config.<field>=<value> ...]

Re-running the same command skips finished runs and resumes interrupted ones. With ``--shard i/n``, n hosts
(or GPUs) split the sweep over one shared workdir: each runs every n-th job starting at job i, and each
aggregates every run finished in the workdir so far, whichever shard ran it.
"""

import sys

from jaxalign.cli import OneLineParser
from jaxalign.errors import JaxalignError
from jaxalign.sweep import load_sweep_config, parse_shard, run_sweep


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--shard", default="0/1", help="run shard i of n (0 <= i < n) of the sweep's jobs; default 0/1: all")
    parser.add_argument("--progress", action="store_true")
    try:
        args, overrides = parser.parse_known_args()
        shard = parse_shard(args.shard)
        config = load_sweep_config(args.config, overrides)
        result = run_sweep(config, args.workdir, progress=args.progress, shard=shard)
    except JaxalignError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 2
    if shard[1] > 1:  # runs.csv holds every shard's finished runs, not only this one's
        print(f"shard {result['shard']}: {result['jobs']} of {result['sweep_jobs']} jobs ({result['ran']} run, {result['skipped']} skipped) "
              f"in {result['wall_s']} s; {result['runs']} finished runs so far in {args.workdir}/runs.csv")  # fmt: skip
    else:
        print(f"{result['runs']} runs in {result['jobs']} jobs ({result['ran']} run, {result['skipped']} skipped) in {result['wall_s']} s; "
              f"results in {args.workdir}/runs.csv")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
