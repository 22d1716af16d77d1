"""``evolution``: an evosax strategy over a search space (arXiv 2506.00299), :func:`~jaxalign.search.make_search`."""

from __future__ import annotations

from jaxalign.methods.base import METHODS, Context, MethodSpec
from jaxalign.search import Search, make_search


def _evolution(context: Context, space, strategy) -> Search:
    return make_search(
        sampler=context.sampler, space=space, strategy=strategy, objective=context.objective,
        image_shape=context.image_shape, maximize=context.maximize, mesh=context.mesh,
    )  # fmt: skip


METHODS.register("evolution", MethodSpec(_evolution, uses_strategy=True))
