"""Compose baseline image, best image and fitness curve of one run into one picture.

    python scripts/readme_figure.py --workdir runs/default --out docs/default_run.png
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, name, title in (
        (axes[0], "images/baseline.png", f"baseline\nfitness {summary['baseline_fitness']:.4g}"),
        (axes[1], summary["best_image"], f"best after {summary['generations']} generations\nfitness {summary['best_fitness']:.4g}"),
    ):
        ax.imshow(Image.open(workdir / name), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    steps = [line["step"] for line in lines[1:]]
    axes[2].plot(steps, [line["best_fitness"] for line in lines[1:]], "-o", markersize=3, label="best so far")
    axes[2].plot(steps, [line["mean_fitness"] for line in lines[1:]], "--", label="population mean")
    axes[2].axhline(lines[0]["best_fitness"], color="gray", linewidth=1, label="baseline")
    axes[2].set_xlabel("generation")
    axes[2].set_ylabel(" + ".join(f"{w:g}*{k}" for k, w in summary["rewards"].items()))
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{summary['strategy']} / {summary['space']} on the {summary['model']} model: {summary['prompt']!r}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
