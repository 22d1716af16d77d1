"""Compose baseline image, best image and fitness curve of one run into one picture; for the embedded shapes
model, each image's title also gives the judge's (``jaxalign.shapes.describe``) reading of the attributes the
prompt names, marking the wrong ones.

    python scripts/readme_figure.py --workdir runs/default --out docs/default_run.png
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from jaxalign import shapes  # noqa: E402
from jaxalign.evaluate import load_image  # noqa: E402


def judged(path: Path, prompt: str) -> str:
    """The judge's reading of the prompt's attributes in the image at ``path`` ("" for other prompts)."""
    named = shapes.parse_caption(prompt)
    if not named:
        return ""
    read = shapes.describe(load_image(path))
    if read is None:
        return "\njudge: no shape"
    words = [getattr(read, f) if getattr(read, f) == v else f"{getattr(read, f)} (not {v})" for f, v in named.items()]
    right = sum(getattr(read, f) == v for f, v in named.items())
    return f"\njudge {right}/{len(named)}: " + ", ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for ax, name, title in (
        (axes[0], "images/baseline.png", f"baseline\nfitness {summary['baseline_fitness']:.4g}"),
        (axes[1], summary["best_image"], f"best after {summary['generations']} generations\nfitness {summary['best_fitness']:.4g}"),
    ):
        ax.imshow(Image.open(workdir / name), interpolation="nearest")
        ax.set_title(title + judged(workdir / name, summary["prompt"]), fontsize=8)
        ax.axis("off")
    steps = [line["step"] for line in lines[1:]]
    axes[2].plot(steps, [line["best_fitness"] for line in lines[1:]], "-o", markersize=3, label="best so far")
    axes[2].plot(steps, [line["mean_fitness"] for line in lines[1:]], "--", label="population mean")
    axes[2].axhline(lines[0]["best_fitness"], color="gray", linewidth=1, label="baseline")
    axes[2].set_xlabel("generation")
    axes[2].set_ylabel(" + ".join(f"{w:g}*{k}" for k, w in summary["rewards"].items()))
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{summary['strategy'] or summary['method']} / {summary['method_params'].get('space', 'noise')} on the {summary['model']} model: {summary['prompt']!r}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
