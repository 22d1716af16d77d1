"""Alignment methods in one framework: evolution and its baselines and siblings share the sampler,
rewards, runner and outputs, so comparing them means changing ``config.method``.

Every method is a :class:`~jaxalign.search.Search` (pure ``init``, a compiled generation 0 ``start``
and one-generation ``step`` over a :class:`~jaxalign.search.SearchState`) registered in
:data:`METHODS`; each lives in its own module here and follows its official implementation (module
docstrings name the files):

* ``evolution`` (:mod:`.evolution`): an evosax strategy over a search space, arXiv 2506.00299.
* ``random`` (:mod:`.best_of_n`): best-of-N.
* ``zero_order`` (:mod:`.zero_order`): zero-order search, Ma et al. 2025 (arXiv 2501.09732).
* ``dno``, ``dno_hybrid`` (:mod:`.dno`): Direct Noise Optimization, Tang et al. 2024 (arXiv 2405.18881).
* ``svdd`` (:mod:`.svdd`): SVDD-PM, Li et al. 2024 (arXiv 2408.08252).
* ``dsearch`` (:mod:`.dsearch`): DSearch and DSearch-R, Li, Uehara et al. 2025 (arXiv 2503.02039).
* ``das`` (:mod:`.das`): Diffusion Alignment as Sampling, Kim et al. 2025 (arXiv 2501.05803).
* ``fk_steering`` (:mod:`.fk_steering`): Feynman-Kac steering, Singhal et al. 2025 (arXiv 2501.06848).
"""

from jaxalign.methods import best_of_n, das, dno, dsearch, evolution, fk_steering, svdd, zero_order  # noqa: F401  (registration)
from jaxalign.methods.base import METHODS, Context, MethodSpec, build_method

__all__ = ["METHODS", "Context", "MethodSpec", "build_method"]
