"""The context's sufficient statistic, sampled without its tokens (Gaussian data only).

For linear responses `z_i = (x_i, y_i) = T^T (x_i, eps_i)` with `T = [[I, w], [0, 1]]`
and `(x_i, eps_i) ~ N(0, diag(cov_x, sigma^2))`, so

    n S = sum_i z_i z_i^T = F F^T,   F = T^T C G,   G G^T ~ Wishart_(d+1)(I, n),   C = diag(chol(cov_x), sigma).

A batch of contexts is drawn as G's structurally non-zero entries
(`ContextStatistics.entries_ExB`, in the order of `factor_pattern`) and the task
vectors w. G is Bartlett's factor: lower triangular (trapezoidal when n < d + 1)
with chi(n), chi(n-1), ... on the diagonal and standard normals below, `O(d^2)`
random numbers whatever `n` is; for the smallest `n`, where that costs more, the
`n` Gaussian columns themselves. Both are exact. `factor` assembles the dense F
for the general readout; the one-layer training loss
(`icl_theory.regression.lsa_fused`) reads the entries as they are.

Arrays here put the batch axis last (`F_DxKxB`): on CPU, XLA vectorises the
per-prompt arithmetic over a contiguous batch axis.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.engine import sharding
from icl_theory.engine import draws
from icl_theory.regression.task import RegressionTask, draw_task_vectors

# A chi^2(k) with k <= _SUM_MAX_DOF is a sum of exponentials (rejection-free, ceil(k/2) random
# words); a larger k is one Marsaglia-Tsang proposal (a normal, a uniform, a log and a cube,
# about 3 words' work) plus the redraws of the few rejected.
_SUM_MAX_DOF = 20
_PRODUCT_TERMS = 5  # uniforms per log: a product of 5 U(0, 1] stays above 2^-115


class FactorPattern(NamedTuple):
  """Where G's entries sit: entry e of a batch is G[rows[e], cols[e]]; the rest of G is 0."""
  rows: tuple[int, ...]
  cols: tuple[int, ...]
  num_cols: int   # K: min(n, D) for Bartlett's factor, n for the Gaussian columns
  bartlett: bool  # if so, the first K entries are the diagonal, chi(n), chi(n-1), ...


class ContextStatistics(NamedTuple):
  """A batch of contexts, each as G's entries (S = F F^T / n, F = T^T C G), and their task vectors."""
  entries_ExB: jax.Array  # G[pattern.rows[e], pattern.cols[e]], pattern = factor_pattern(d + 1, n)
  w_dxB: jax.Array        # each prompt's w, for T and for the query's integrated loss


def _chi_words(dof: int) -> int:
  return (dof + 1) // 2 if dof <= _SUM_MAX_DOF else 3


def uses_bartlett(dim: int, dof: int) -> bool:
  """Whether Bartlett's factor costs fewer random words than `dof` Gaussian columns."""
  k = min(dim, dof)
  below = k * (k - 1) // 2 + (dim - k) * k
  return below + sum(_chi_words(dof - j) for j in range(k)) < dim * dof


def factor_pattern(dim: int, dof: int) -> FactorPattern:
  """The entries a batch of `(dim, dof)` factors is drawn as (static: a function of the shapes)."""
  if not uses_bartlett(dim, dof):
    rows, cols = np.divmod(np.arange(dim * dof), dof)
    return FactorPattern(tuple(rows.tolist()), tuple(cols.tolist()), dof, bartlett=False)
  k = min(dim, dof)
  below_rows, below_cols = np.tril_indices(dim, -1, k)
  return FactorPattern((*range(k), *below_rows.tolist()), (*range(k), *below_cols.tolist()), k, bartlett=True)


def _gamma_proposal(key: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One Marsaglia-Tsang proposal for Gamma(a), a >= 1: (value, accepted)."""
  k_x, k_u = jax.random.split(key)
  d_ = a - 1.0 / 3.0
  c = 1.0 / jnp.sqrt(9.0 * d_)
  x = draws.normal(k_x, a.shape)
  log_u = jnp.log(draws.uniform(k_u, a.shape))
  v = (1.0 + c * x) ** 3
  accepted = (v > 0) & (log_u < 0.5 * x * x + d_ - d_ * v + d_ * jnp.log(jnp.where(v > 0, v, 1.0)))
  return d_ * v, accepted


def _gamma_by_rejection(key: jax.Array, shape_N: np.ndarray) -> jax.Array:
  """Exact Gamma(a) draws, a >= 1 each, by Marsaglia and Tsang's rejection method.

  Every entry gets a proposal; while any entry is still rejected (about 0.03 / a of
  them are, each time), all get a fresh one and the rejected keep it. A whole-array
  redraw rather than a gather of the rejected: elementwise, so it splits over
  devices with the batch, and one or two rounds suffice at these rates.
  (`jax.random.gamma` is exact too but much slower on CPU.)
  """
  a_N = jnp.asarray(shape_N, jnp.float32)

  def redraw(carry):
    attempt, value_N, accepted_N = carry
    proposal_N, ok_N = _gamma_proposal(jax.random.fold_in(key, attempt), a_N)
    take_N = ok_N & ~accepted_N
    return attempt + 1, jnp.where(take_N, proposal_N, value_N), accepted_N | ok_N

  value_N, accepted_N = _gamma_proposal(jax.random.fold_in(key, 0), a_N)
  _, value_N, _ = jax.lax.while_loop(lambda carry: ~jnp.all(carry[2]), redraw, (jnp.uint32(1), value_N, accepted_N))
  return value_N


def _chi_square_by_sums(key: jax.Array, dof_K: np.ndarray, batch: int) -> list[jax.Array]:
  """chi^2(k) = -2 log(U_1 ... U_m) + (k odd) Z^2, m = k // 2, one row per k: exact, no rejection.

  All rows' uniforms come from one draw and all their normals from another: under a
  sweep's vmap every draw is a loop over the runs, so fewer draws, fewer loops.
  """
  k_u, k_z = jax.random.split(key)
  halves = dof_K // 2
  starts = np.concatenate([[0], np.cumsum(halves)])  # row k's uniforms: starts[k] .. starts[k + 1]
  odd = np.flatnonzero(dof_K % 2)
  u_MxB = draws.uniform_positive(k_u, (int(starts[-1]), batch)) if starts[-1] else None
  z_OxB = draws.normal(k_z, (odd.size, batch)) if odd.size else None
  rows = []
  for k in range(dof_K.size):
    value_B = jnp.zeros((batch,), jnp.float32)
    for start in range(starts[k], starts[k + 1], _PRODUCT_TERMS):  # one log per few uniforms: no underflow
      value_B = value_B - 2.0 * jnp.log(jnp.prod(u_MxB[start:min(start + _PRODUCT_TERMS, starts[k + 1])], axis=0))
    if dof_K[k] % 2:
      value_B = value_B + z_OxB[int(np.searchsorted(odd, k))] ** 2
    rows.append(value_B)
  return rows


def chi_square(key: jax.Array, dof_K: np.ndarray, batch: int) -> jax.Array:
  """Exact chi-square draws (K, batch), row k with dof_K[k] >= 1 degrees of freedom.

  Small degrees of freedom (<= 20) are sums of exponentials (`_chi_square_by_sums`);
  larger ones are 2 Gamma(k/2) by Marsaglia and Tsang's rejection method, which
  costs the same for any k.
  """
  dof_K = np.asarray(dof_K, np.int64)
  rows: list[jax.Array | None] = [None] * dof_K.size
  large = np.flatnonzero(dof_K > _SUM_MAX_DOF)
  if large.size:
    gamma_N = _gamma_by_rejection(jax.random.fold_in(key, 0), np.repeat(dof_K[large] / 2.0, batch))
    for j, row in enumerate(large):
      rows[row] = 2.0 * gamma_N[j * batch:(j + 1) * batch]
  small = np.flatnonzero(dof_K <= _SUM_MAX_DOF)
  if small.size:
    for row, value_B in zip(small, _chi_square_by_sums(jax.random.fold_in(key, 1), dof_K[small], batch)):
      rows[row] = value_B
  return jnp.stack(rows)


def wishart_entries(key: jax.Array, dim: int, dof: int, batch: int) -> jax.Array:
  """G's entries (E, batch), in the order of `factor_pattern(dim, dof)`, for G G^T ~ Wishart_dim(I, dof)."""
  pattern = factor_pattern(dim, dof)
  k_normal, k_chi = jax.random.split(key)
  if not pattern.bartlett:
    return draws.normal(k_normal, (len(pattern.rows), batch))
  k = pattern.num_cols
  diagonal_KxB = jnp.sqrt(chi_square(k_chi, dof - np.arange(k), batch))
  return jnp.concatenate([diagonal_KxB, draws.normal(k_normal, (len(pattern.rows) - k, batch))])


def sample_statistics(key: jax.Array, task: RegressionTask, batch: int) -> ContextStatistics:
  """`batch` contexts of linear-Gaussian prompts as (G's entries, w). Jit with `static_argnums=2`."""
  if not task.is_gaussian:
    raise ValueError(f"response={task.response!r}: the Wishart sampler needs jointly Gaussian (x, y); "
                     "use sample_prompts")
  k_w, k_factor = jax.random.split(key)
  if task.pool is not None:  # a finite pool of tasks: w is one of them, uniformly
    w_dxB = draw_task_vectors(k_w, task, batch).T
  else:
    w_dxB = jnp.linalg.cholesky(task.cov_w) @ draws.normal(k_w, (task.d, batch))
  entries_ExB = wishart_entries(k_factor, task.d + 1, task.n, batch)
  return sharding.shard_batch(ContextStatistics(entries_ExB=entries_ExB, w_dxB=w_dxB), axis=-1)


def wishart_factor(entries_ExB: jax.Array, pattern: FactorPattern, dim: int) -> jax.Array:
  """The dense G (dim, K, batch) with G G^T ~ Wishart_dim(I, dof), from its entries."""
  slot = np.full((dim, pattern.num_cols), len(pattern.rows))  # a zero row for G's structural zeros
  slot[pattern.rows, pattern.cols] = np.arange(len(pattern.rows))
  padded = jnp.concatenate([entries_ExB, jnp.zeros((1, entries_ExB.shape[-1]), entries_ExB.dtype)])
  return padded[slot.reshape(-1)].reshape(dim, pattern.num_cols, -1)


def factor(stats: ContextStatistics, task: RegressionTask) -> jax.Array:
  """F = T^T C G (D, K, B): n S = F F^T, the context's (x_i, y_i) up to a rotation of its columns."""
  d = task.d
  g_DxKxB = wishart_factor(stats.entries_ExB, factor_pattern(d + 1, task.n), d + 1)
  x_dxKxB = jnp.einsum("ij,jkb->ikb", jnp.linalg.cholesky(task.cov_x), g_DxKxB[:d])
  y_KxB = jnp.einsum("ikb,ib->kb", x_dxKxB, stats.w_dxB) + task.noise_std * g_DxKxB[d]
  return jnp.concatenate([x_dxKxB, y_KxB[None]], axis=0)


def covariate_factor(key: jax.Array, task: RegressionTask, batch: int) -> jax.Array:
  """(d, K, batch): per context a factor C G of its covariates' Gram matrix, X^T X = (C G)(C G)^T in law.

  G G^T ~ Wishart_d(I, n) (Bartlett's factor, or the n Gaussian columns where those
  cost less), C = chol(cov_x); K = min(n, d) columns. What a function of X^T X alone
  (the Bayes posterior's covariance) needs of a context, at the cost of n = d.
  """
  pattern = factor_pattern(task.d, task.n)
  g_DxKxB = wishart_factor(wishart_entries(key, task.d, task.n, batch), pattern, task.d)
  return jnp.einsum("ij,jkb->ikb", jnp.linalg.cholesky(task.cov_x), g_DxKxB)


def statistic_matrix(stats: ContextStatistics, task: RegressionTask) -> jax.Array:
  """S = F F^T / n as (B, D, D), batch first like the token path's statistics."""
  f = factor(stats, task)
  return jnp.einsum("ikb,jkb->bij", f, f) / task.n
