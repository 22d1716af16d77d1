"""The plain-torch CoSyNE of the speed benchmark's reference loop does evotorch's work per generation."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmark_speed import TorchCosyne  # noqa: E402


def test_torch_cosyne_scores_what_evotorch_scores_and_improves():
    counts = []

    def score(solutions):
        counts.append(len(solutions))
        return -(solutions**2).sum(1)

    torch.manual_seed(0)
    search = TorchCosyne(score, popsize=16, length=40)
    initial = None
    for _ in range(80):
        search.step()
        initial = float(search.fitness.max()) if initial is None else initial
        assert torch.equal(search.fitness, -(search.population**2).sum(1))  # the kept scores are the kept members'
    # evotorch's Cosyne (popsize 16, no elites) scores its first population, then per generation
    # 2 x popsize/4 children and the permuted population: 8 + 16.
    assert counts == [16] + [24] * 80
    assert float(search.fitness.max()) > initial + 1.0
