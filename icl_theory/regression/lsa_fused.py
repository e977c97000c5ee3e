"""One LSA layer's integrated training loss on Wishart statistics, as one loop over the batch.

With the Wishart sampler the training loss of `icl_theory.regression.experiment`
is, per prompt, (v - w)^T cov_x (v - w) + sigma^2 with

    v = A^T S p = A^T F F^T p / n,   A = W_KQ[:, :d],   p = W_PV's last row,
    F = T^T C G   (`icl_theory.regression.statistics`).

Written with einsums over (D, K, B) arrays (`lsa.query_readout`), XLA on CPU runs
this as dozens of small kernels: contractions over leading axes, dots of tiny
matrices, a gather to place G's entries, and the autodiff of each. Here every
per-prompt quantity is a row of the batch and every sum over the small axes is
unrolled in Python, so the forward pass is one elementwise loop over the batch that
reads G's entries where the sampler left them (its structural zeros are skipped,
not multiplied). The gradient is written out, because autodiff of the unrolled rows
would make one reduction per parameter entry:

    dL/dA = mean_b f_b g_b^T / n,   dL/dp = mean_b F_b F_b^T A g_b / n,
    f = F F^T p,   g = 2 cov_x (v - w),

the second again one loop. tests/regression/lsa_fused_test.py holds both to autodiff of the
einsum path on the same draws. The unrolled program grows as d^2 K, so it is
used for one layer and d <= MAX_D; elsewhere the einsum path is as fast.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from icl_theory.regression import lsa, statistics
from icl_theory.regression.task import RegressionTask

MAX_D = 12

Rows = Sequence[Any]  # one entry per index of a small axis: (B,) arrays, or scalars shared by the batch


def supports(task: RegressionTask, num_layers: int) -> bool:
  """Whether `integrated_loss` applies: one layer, and d small enough to unroll."""
  return num_layers == 1 and task.d <= MAX_D


def _sum(terms) -> Any:
  return functools.reduce(operator.add, terms)


def _gram_apply(x: Rows, pattern: statistics.FactorPattern, entries_ExB: jax.Array, w_dxB: jax.Array,
                chol_x_dxd: jax.Array, noise_std: jax.Array) -> list[jax.Array]:
  """F F^T x for each prompt's F = T^T C G (x: D rows), as D rows."""
  d = w_dxB.shape[0]
  w, chol = list(w_dxB), chol_x_dxd  # chol is lower triangular: only its (i >= j) entries are summed
  # c = C^T T x = (chol^T (x_x + x_y w), sigma x_y); then q = G^T c, r = G q.
  t = [x[i] + x[d] * w[i] for i in range(d)]
  c = [_sum(chol[j, i] * t[j] for j in range(i, d)) for i in range(d)] + [noise_std * x[d]]
  entry = list(entries_ExB)
  by_col: list[list] = [[] for _ in range(pattern.num_cols)]
  for e, (i, k) in enumerate(zip(pattern.rows, pattern.cols)):
    by_col[k].append(entry[e] * c[i])
  q = [_sum(terms) for terms in by_col]
  by_row: list[list] = [[] for _ in range(d + 1)]
  for e, (i, k) in enumerate(zip(pattern.rows, pattern.cols)):
    by_row[i].append(entry[e] * q[k])
  r = [_sum(terms) for terms in by_row]  # every row of G holds an entry
  # F q = T^T C r = (chol r_x, w . chol r_x + sigma r_y).
  f_x = [_sum(chol[i, j] * r[j] for j in range(i + 1)) for i in range(d)]
  return f_x + [_sum(w[i] * f_x[i] for i in range(d)) + noise_std * r[d]]


def _forward(pattern, n, p_D, a_Dxd, entries_ExB, w_dxB, chol_x_dxd, cov_x_dxd, noise_std):
  d = w_dxB.shape[0]
  f = _gram_apply([p_D[i] for i in range(d + 1)], pattern, entries_ExB, w_dxB, chol_x_dxd, noise_std)
  error = [_sum(a_Dxd[i, j] * f[i] for i in range(d + 1)) / n - w_dxB[j] for j in range(d)]
  cov_error = [_sum(cov_x_dxd[j, l] * error[l] for l in range(d)) for j in range(d)]
  loss = jnp.mean(_sum(error[j] * cov_error[j] for j in range(d))) + noise_std**2
  return loss, (jnp.stack(f), jnp.stack(cov_error))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(pattern, n, p_D, a_Dxd, entries_ExB, w_dxB, chol_x_dxd, cov_x_dxd, noise_std):
  return _forward(pattern, n, p_D, a_Dxd, entries_ExB, w_dxB, chol_x_dxd, cov_x_dxd, noise_std)[0]


def _loss_fwd(pattern, n, p_D, a_Dxd, *data):
  loss, (f_DxB, cov_error_dxB) = _forward(pattern, n, p_D, a_Dxd, *data)
  return loss, (a_Dxd, f_DxB, cov_error_dxB, data)


def _loss_bwd(pattern, n, residuals, cotangent):
  a_Dxd, f_DxB, cov_error_dxB, data = residuals
  entries_ExB, w_dxB, chol_x_dxd, _, noise_std = data
  g_dxB = (2.0 / f_DxB.shape[-1]) * cotangent * cov_error_dxB  # dL/dv
  d_a = f_DxB @ g_dxB.T / n
  h = [_sum(a_Dxd[i, j] * g_dxB[j] for j in range(a_Dxd.shape[1])) / n for i in range(a_Dxd.shape[0])]
  d_p = jnp.sum(jnp.stack(_gram_apply(h, pattern, entries_ExB, w_dxB, chol_x_dxd, noise_std)), axis=-1)
  return (d_p, d_a, *(jnp.zeros_like(x) for x in data))  # no gradient into the data


_loss.defvjp(_loss_fwd, _loss_bwd)


def integrated_loss(params: Mapping[str, Any], stats: statistics.ContextStatistics, task: RegressionTask) -> jax.Array:
  """mean over the batch of E_query[(prediction - y_query)^2 | context, w] of a one-layer LSA."""
  layer = params.get("params", params)["layer_0"]
  pattern = statistics.factor_pattern(task.d + 1, task.n)
  p_D = lsa.readout_sign(params) * layer["W_PV"][-1]  # one layer: a negated readout is a negated p
  return _loss(pattern, task.n, p_D, layer["W_KQ"][:, :task.d], stats.entries_ExB, stats.w_dxB,
               jnp.linalg.cholesky(task.cov_x), task.cov_x, task.noise_std)
