"""One LSA layer's integrated training loss on Wishart statistics, with its gradient written out.

With the Wishart sampler the training loss of `icl_theory.regression.experiment`
is, per prompt, (v - w)^T cov_x (v - w) + sigma^2 with

    v = A^T S p = A^T F F^T p / n,   A = W_KQ[:, :d],   p = W_PV's last row,
    F = T^T C G   (`icl_theory.regression.statistics`).

The einsum path (`lsa.query_readout`) builds each prompt's F, so XLA on CPU runs
dozens of small kernels: a gather that places G's entries, contractions over
leading axes, and the autodiff of each. Here every array keeps the batch last and
G is never formed: F F^T x is applied as C^T, then G^T and G, where multiplying by
G's entries takes a row gather of static indices and a sum into G's columns (or
rows) by a static 0/1 matrix, one small matrix product each. The gradient is
written out, so the backward pass is the same few kernels again:

    dL/dA = mean_b f_b g_b^T / n,   dL/dp = mean_b F_b F_b^T A g_b / n,
    f = F F^T p,   g = 2 cov_x (v - w).

tests/regression/lsa_fused_test.py holds both to autodiff of the einsum path on
the same draws. The 0/1 sums cost K x E per prompt (E entries of G, K columns),
so the path is used for one layer and d <= MAX_D; beyond that the einsum path is
as fast. (An earlier form unrolled every sum over the small axes in Python: one
elementwise loop, but a program that grew as d^2 K and took 15 s to compile at d = 10.)
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.regression import lsa, statistics
from icl_theory.regression.task import RegressionTask

MAX_D = 12


def supports(task: RegressionTask, num_layers: int) -> bool:
  """Whether `integrated_loss` applies: one layer, and d small enough for the 0/1 sums."""
  return num_layers == 1 and task.d <= MAX_D


@functools.lru_cache(maxsize=None)
def _sum_matrices(pattern: statistics.FactorPattern, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """0/1 matrices that add G's E entries into its columns (K x E) and into its rows (dim x E)."""
  entries = np.arange(len(pattern.rows))
  into_cols = np.zeros((pattern.num_cols, len(entries)), np.float32)
  into_cols[pattern.cols, entries] = 1.0
  into_rows = np.zeros((dim, len(entries)), np.float32)
  into_rows[pattern.rows, entries] = 1.0
  return into_cols, into_rows


def _gram_apply(x_DxB: jax.Array, pattern: statistics.FactorPattern, entries_ExB: jax.Array, w_dxB: jax.Array,
                chol_x_dxd: jax.Array, noise_std: jax.Array) -> jax.Array:
  """F F^T x for each prompt's F = T^T C G; x is (D, B), or (D, 1) shared by the batch."""
  d = w_dxB.shape[0]
  rows, cols = np.asarray(pattern.rows), np.asarray(pattern.cols)
  into_cols, into_rows = _sum_matrices(pattern, d + 1)
  # c = C^T T x = (chol^T (x_x + x_y w), sigma x_y); then q = G^T c, r = G q.
  c_DxB = jnp.concatenate([chol_x_dxd.T @ (x_DxB[:d] + x_DxB[d] * w_dxB),
                           jnp.broadcast_to(noise_std * x_DxB[d:], (1, w_dxB.shape[1]))])
  q_KxB = into_cols @ (entries_ExB * c_DxB[rows])
  r_DxB = into_rows @ (entries_ExB * q_KxB[cols])
  # F q = T^T C r = (chol r_x, w . chol r_x + sigma r_y).
  f_x = chol_x_dxd @ r_DxB[:d]
  return jnp.concatenate([f_x, jnp.sum(w_dxB * f_x, axis=0, keepdims=True) + noise_std * r_DxB[d:]])


def _forward(pattern, n, p_D, a_Dxd, entries_ExB, w_dxB, chol_x_dxd, cov_x_dxd, noise_std):
  f_DxB = _gram_apply(p_D[:, None], pattern, entries_ExB, w_dxB, chol_x_dxd, noise_std)
  error_dxB = a_Dxd.T @ f_DxB / n - w_dxB
  cov_error_dxB = cov_x_dxd @ error_dxB
  loss = jnp.mean(jnp.sum(error_dxB * cov_error_dxB, axis=0)) + noise_std**2
  return loss, (f_DxB, cov_error_dxB)


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
  d_p = jnp.sum(_gram_apply(a_Dxd @ g_dxB / n, pattern, entries_ExB, w_dxB, chol_x_dxd, noise_std), axis=-1)
  return (d_p, d_a, *(jnp.zeros_like(x) for x in data))  # no gradient into the data


_loss.defvjp(_loss_fwd, _loss_bwd)


def integrated_loss(params: Mapping[str, Any], stats: statistics.ContextStatistics, task: RegressionTask) -> jax.Array:
  """mean over the batch of E_query[(prediction - y_query)^2 | context, w] of a one-layer LSA."""
  layer = params.get("params", params)["layer_0"]
  pattern = statistics.factor_pattern(task.d + 1, task.n)
  p_D = lsa.readout_sign(params) * layer["W_PV"][-1]  # one layer: a negated readout is a negated p
  return _loss(pattern, task.n, p_D, layer["W_KQ"][:, :task.d], stats.entries_ExB, stats.w_dxB,
               jnp.linalg.cholesky(task.cov_x), task.cov_x, task.noise_std)
