"""Gain over the baseline at an equal NFE budget, from a sweep's ``steps.csv`` (the BENCHMARKS.md table).

    python scripts/gain_at_budget.py --workdir runs/sweep_budget_curves --budget 1760

For every run, the best fitness among its steps whose cumulative NFE is within the budget, minus its
baseline (step 0); then the median and interquartile range over runs for each strategy and reward.
Strategies whose generation 0 is cheaper (distribution strategies evaluate only the baseline) are
compared at the same NFE, not the same number of generations.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def gains(steps_csv: Path, budget: int) -> dict[tuple[str, str], list[float]]:
    by_run: dict[str, list[dict]] = defaultdict(list)
    with steps_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_run[row["run"]].append(row)
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rows in by_run.values():
        rows.sort(key=lambda r: int(r["step"]))
        baseline = float(rows[0]["best_fitness"])
        within = [float(r["best_fitness"]) for r in rows if int(r["nfe"]) <= budget]
        out[(rows[0]["method"], rows[0]["rewards"])].append(max(within) - baseline)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=1760)
    args = parser.parse_args()
    table = gains(args.workdir / "steps.csv", args.budget)
    strategies = list(dict.fromkeys(s for s, _ in table))
    rewards = list(dict.fromkeys(r for _, r in table))
    print(f"gain over the baseline at {args.budget} NFE, median [IQR] over runs")
    print("| strategy / method | " + " | ".join(rewards) + " |")
    print("| --- | " + " | ".join("---" for _ in rewards) + " |")
    for strategy in strategies:
        cells = []
        for reward in rewards:
            values = table.get((strategy, reward), [])
            q1, median, q3 = np.percentile(values, [25, 50, 75]) if values else (np.nan,) * 3
            cells.append(f"{median:.3f} [{q1:.3f}, {q3:.3f}] (n={len(values)})")
        print(f"| {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
