"""``svdd``: SVDD-PM (Li et al. 2024, arXiv 2408.08252), as the official image code (masa-ue/SVDD-image
``sd_pipeline.py``, ``Decoding_nonbatch_SDPipeline``, with ``inference_decoding_nonp.py``'s arguments).

At every denoising step but the last, each of ``popsize`` particles draws M = ``num_candidates``
(official default 20) next latents by stochastic DDIM steps (eta 1) from its own model output,
scores each by the reward of its decoded predicted clean image (Tweedie, after one guided model call
at the next timestep) and keeps the argmax; the last step is a plain stochastic step. It is DSearch's
loop with no search steps and no drop schedule (:func:`~jaxalign.methods.dsearch.beam_method`), and
like it reuses the chosen candidate's next-step model output (the official code recomputes it:
``popsize`` more NFE per step, the same value).
"""

from __future__ import annotations

from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, MethodSpec
from jaxalign.methods.dsearch import beam_method
from jaxalign.search import Search


def _svdd(context: Context, numeric, num_candidates: int) -> Search:
    return beam_method(context, numeric, final_beam=context.popsize, num_candidates=num_candidates, search_schedule="none", drop_schedule="none")


def _check(context: Context, static, numeric) -> None:
    if static["num_candidates"] < 1:
        raise JaxalignError(f"method 'svdd': method_params.num_candidates must be at least 1, got {static['num_candidates']}")


METHODS.register("svdd", MethodSpec(_svdd, static={"num_candidates": 20}, numeric={"eta": 1.0}, stochastic_steps=True, check=_check))
