"""Print the method table of a sweep that ``jaxalign eval`` has scored (BENCHMARKS.md's miniature of the paper's
tables): per method, the optimised reward's median with its bootstrap 95% interval, the judge's accuracy, a
cross-reward, diversity, wall time and memory, and the hardware the sweep ran on.

    python scripts/method_table.py --workdir runs/sweep_miniature [--cross-reward saturation]
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from jaxalign.comparison import baseline_row, markdown, method_table
from jaxalign.errors import JaxalignError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cross-reward", default="saturation")
    args = parser.parse_args()
    try:
        table = method_table(args.workdir, args.cross_reward)
        baseline = baseline_row(args.workdir)
    except JaxalignError as error:
        print(f"method_table: error: {error}", file=sys.stderr)
        return 2
    summary = json.loads(next(args.workdir.glob("*/*/summary.json")).read_text())  # a prompt's run within a job
    print(f"sweep ran on: {summary['device']}; this machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(markdown(table, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
