"""Resampling schemes for sequential Monte Carlo: ``(key, weights [K]) -> ancestor indices [K]``.

``weights`` are normalised (non-negative, summing to one); particle ``n`` is expected to get
``K * weights[n]`` children in every scheme. The schemes are those of Chopin & Papaspiliopoulos,
*An Introduction to Sequential Monte Carlo* (2020), ch. 9, as implemented in ``nchopin/particles``
(``resampling.py``) and copied into DAS's official code (krafton-ai/DAS ``das/smc_utils.py``):

* ``multinomial``: K independent draws;
* ``stratified``: one uniform draw in each of K equal strata of [0, 1);
* ``systematic``: one uniform offset shared by K evenly spaced points;
* ``residual``: floor(K w_n) copies of each particle, the rest drawn from the residual weights;
* ``ssp``: the Srinivasan sampling process (Gerber, Chopin & Whiteley 2019, "Negative association,
  ordering and convergence of resampling methods", Ann. Statist. 47(4), arXiv 1707.01845), DAS's
  default: every particle gets floor(K w_n) or floor(K w_n) + 1 children, like systematic
  resampling, but the scheme is also consistent.

All are pure and jit-compatible; the sequential SSP runs as a ``lax.fori_loop`` over K - 1 pairings.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxalign.registry import Registry

RESAMPLERS: Registry[Callable[[jax.Array, jax.Array], jax.Array]] = Registry("resampling scheme")


def _inverse_cdf(weights, points):
    return jnp.clip(jnp.searchsorted(jnp.cumsum(weights), points, side="right"), 0, weights.shape[0] - 1)


@RESAMPLERS.register("multinomial")
def multinomial(key, weights):
    """K independent draws from the weights."""
    return jax.random.categorical(key, jnp.log(weights), shape=weights.shape)


@RESAMPLERS.register("stratified")
def stratified(key, weights):
    """One uniform draw in each of K equal strata of [0, 1)."""
    k = weights.shape[0]
    return _inverse_cdf(weights, (jnp.arange(k) + jax.random.uniform(key, (k,))) / k)


@RESAMPLERS.register("systematic")
def systematic(key, weights):
    """One uniform offset shared by K evenly spaced points."""
    k = weights.shape[0]
    return _inverse_cdf(weights, (jnp.arange(k) + jax.random.uniform(key)) / k)


@RESAMPLERS.register("residual")
def residual(key, weights):
    """floor(K w_n) copies of each particle, the remaining slots drawn from the residual weights."""
    k = weights.shape[0]
    counts = jnp.floor(k * weights).astype(jnp.int32)
    kept = jnp.sum(counts)
    deterministic = jnp.repeat(jnp.arange(k), counts, total_repeat_length=k)
    remainder = k * weights - counts
    drawn = jax.random.categorical(key, jnp.log(jnp.maximum(remainder, 0.0)), shape=(k,))
    return jnp.where(jnp.arange(k) < kept, deterministic, drawn)


@RESAMPLERS.register("ssp")
def ssp(key, weights):
    """The Srinivasan sampling process (Gerber, Chopin & Whiteley 2019): sorted ancestor indices.

    Each particle starts with floor(K w_n) children and a fractional part xi_n. Two "active"
    particles i and j are paired at a time; mass moves between their fractional parts, towards i
    or j at random with the probabilities that keep E[children] = K w_n, until one of them is
    resolved (its fraction reaches 0, or 1 and it gets one more child); the next particle then
    takes its place. K - 1 pairings resolve all but one particle, as ``ssp`` in DAS's
    ``smc_utils.py`` (from ``nchopin/particles``).
    """
    k = weights.shape[0]
    scaled = k * weights
    floors = jnp.floor(scaled)
    counts, fractions = floors.astype(jnp.int32), scaled - floors
    uniforms = jax.random.uniform(key, (max(k - 1, 1),), dtype=scaled.dtype)  # one spare when K = 1: no pairing reads it

    def pair(step, state):
        counts, fractions, i, j = state
        grow_i = jnp.minimum(fractions[j], 1.0 - fractions[i])  # raise xi_i, lower xi_j
        grow_j = jnp.minimum(fractions[i], 1.0 - fractions[j])  # the opposite
        total = grow_i + grow_j
        # total = 0 only when both fractions are 0; then nothing moves and no swap is needed.
        p_swap = jnp.where(total > 0, grow_i / jnp.where(total > 0, total, 1.0), 0.0)
        swap = uniforms[step] < p_swap  # swap so that the move below always raises xi_i
        i, j = jnp.where(swap, j, i), jnp.where(swap, i, j)
        delta = jnp.where(swap, grow_j, grow_i)
        absorbs = fractions[j] < 1.0 - fractions[i]  # j's fraction fits into i's: j is resolved with 0
        fractions = jnp.where(absorbs, fractions.at[i].add(delta), fractions.at[j].add(-delta))
        counts = counts.at[i].add(jnp.where(absorbs, 0, 1))  # otherwise i reaches 1: one more child
        newcomer = step + 2
        return counts, fractions, jnp.where(absorbs, i, newcomer), jnp.where(absorbs, newcomer, j)

    counts, fractions, i, j = jax.lax.fori_loop(0, k - 1, pair, (counts, fractions, jnp.int32(0), jnp.int32(1)))
    # In exact arithmetic the counts sum to K. Round-off can leave the one unresolved particle (the
    # active one that is not the past-the-end newcomer) with a fraction just below 1 and the total one
    # short; the official code adds that child when the fraction exceeds 0.99 and raises otherwise.
    # We give that particle whatever brings the total to exactly K (never below zero), so the result
    # always has K ancestors and no error is possible inside a compiled loop.
    unresolved = jnp.where(j == k, i, j)
    counts = counts.at[unresolved].add(k - jnp.sum(counts))
    return jnp.repeat(jnp.arange(k), jnp.maximum(counts, 0), total_repeat_length=k)
