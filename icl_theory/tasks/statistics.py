"""The context's sufficient statistic, sampled without its tokens (Gaussian data only).

For linear responses `z_i = (x_i, y_i) = T^T (x_i, eps_i)` with `T = [[I, w], [0, 1]]`
and `(x_i, eps_i) ~ N(0, diag(cov_x, sigma^2))`, so

    n S = sum_i z_i z_i^T = T^T C W C^T T,   W ~ Wishart_(d+1)(I, n),   C = diag(chol(cov_x), sigma).

We draw a factor `G` of `W = G G^T` and return `F = T^T C G`, so `S = F F^T / n`.
The factor is Bartlett's: lower triangular (trapezoidal when n < d + 1) with
chi(n), chi(n-1), ... on the diagonal and standard normals below, `O(d^2)`
random numbers whatever `n` is; for the smallest `n` it is the `n` Gaussian
columns themselves, which is cheaper there. Both are exact.

Arrays here put the batch axis last (`F_DxKxB`): on CPU, XLA vectorises the
per-prompt arithmetic over a contiguous batch axis, and random draws with a
small trailing axis run several times slower.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory import sharding
from icl_theory.tasks import draws
from icl_theory.tasks.regression import RegressionTask

# What one chi draw costs, in normal draws: a normal, a uniform, a log and a cube
# (Marsaglia-Tsang), and about 3% of that again for the redraws.
_CHI_COST = 3


class ContextStatistics(NamedTuple):
  """A batch of contexts seen through S = F F^T / n, and their task vectors."""
  factor_DxKxB: jax.Array  # F; D = d + 1, K = min(n, D) columns
  w_dxB: jax.Array         # each prompt's w, for the query's integrated loss


def uses_bartlett(dim: int, dof: int) -> bool:
  """Whether Bartlett's factor costs fewer random numbers than `dof` Gaussian columns."""
  k = min(dim, dof)
  return k * (k - 1) // 2 + (dim - k) * k + _CHI_COST * k < dim * dof


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


def chi_square(key: jax.Array, dof_K: np.ndarray, batch: int) -> jax.Array:
  """Exact chi-square draws (K, batch), row k with dof_K[k] >= 1 degrees of freedom.

  chi^2(k) = 2 Gamma(k/2), Gamma(a) by Marsaglia and Tsang's rejection method
  (Gamma(a + 1) U^(1/a) for a < 1). Every entry gets one proposal; the few
  rejected ones (about 1-5%) are redrawn in a small pool of entries until none
  is left, so the cost is about one proposal per draw. (`jax.random.gamma` is
  exact too but about 20x slower on CPU.)
  """
  dof_K = np.asarray(dof_K, np.float64)
  half = dof_K / 2.0
  a_N = jnp.asarray(np.repeat(np.where(half < 1.0, half + 1.0, half), batch), jnp.float32)
  size = a_N.shape[0]
  value_N, accepted_N = _gamma_proposal(jax.random.fold_in(key, 1), a_N)
  pool = max(64, size // 16)

  def redraw(carry):
    attempt, value_N, accepted_N = carry
    idx_P = jnp.nonzero(~accepted_N, size=pool, fill_value=size)[0]  # fill: out of range, dropped below
    proposal, ok = _gamma_proposal(jax.random.fold_in(key, attempt), jnp.take(a_N, idx_P, mode="clip"))
    value_N = value_N.at[jnp.where(ok, idx_P, size)].set(proposal, mode="drop")
    accepted_N = accepted_N.at[jnp.where(ok, idx_P, size)].set(True, mode="drop")
    return attempt + 1, value_N, accepted_N

  _, value_N, _ = jax.lax.while_loop(lambda carry: ~jnp.all(carry[2]), redraw,
                                     (jnp.uint32(2), value_N, accepted_N))
  gamma_KxB = value_N.reshape(dof_K.size, batch)
  small = np.flatnonzero(half < 1.0)
  if small.size:  # Gamma(a) = Gamma(a + 1) U^(1/a), only for the rows with one degree of freedom
    u = draws.uniform(jax.random.fold_in(key, 0), (small.size, batch))
    gamma_KxB = gamma_KxB.at[small].multiply(u ** (1.0 / half[small, None]))
  return 2.0 * gamma_KxB


def wishart_factor(key: jax.Array, dim: int, dof: int, batch: int) -> jax.Array:
  """G (dim, K, batch), K = min(dim, dof), with G G^T ~ Wishart_dim(I, dof).

  Bartlett's factor: the lower-trapezoidal Cholesky factor of the Gaussian
  columns' Gram matrix, chi(dof), chi(dof - 1), ... on its diagonal and
  standard normals below. Where that costs more, the dof Gaussian columns.
  """
  if not uses_bartlett(dim, dof):
    return draws.normal(key, (dim, dof, batch))
  k = min(dim, dof)
  k_normal, k_chi = jax.random.split(key)
  rows, cols = np.tril_indices(dim, -1, k)
  below_LxB = draws.normal(k_normal, (rows.size, batch))
  # Place the below-diagonal draws by a gather of whole batch rows (a zero row elsewhere).
  slot = np.full((dim, k), rows.size)
  slot[rows, cols] = np.arange(rows.size)
  padded = jnp.concatenate([below_LxB, jnp.zeros((1, batch))], axis=0)
  lower_DxKxB = padded[slot.reshape(-1)].reshape(dim, k, batch)
  diagonal_KxB = jnp.sqrt(chi_square(k_chi, dof - np.arange(k), batch))
  return lower_DxKxB + np.eye(dim, k)[:, :, None] * diagonal_KxB[None]


def sample_statistics(key: jax.Array, task: RegressionTask, batch: int) -> ContextStatistics:
  """`batch` contexts of linear-Gaussian prompts as (F, w). Jit with `static_argnums=2`."""
  if not task.is_gaussian:
    raise ValueError(f"response={task.response!r}: the Wishart sampler needs jointly Gaussian (x, y); "
                     "use sample_prompts")
  d, n = task.d, task.n
  k_w, k_factor = jax.random.split(key)
  w_dxB = jnp.linalg.cholesky(task.cov_w) @ draws.normal(k_w, (d, batch))
  g_DxKxB = wishart_factor(k_factor, d + 1, n, batch)
  x_dxKxB = jnp.einsum("ij,jkb->ikb", jnp.linalg.cholesky(task.cov_x), g_DxKxB[:d])
  y_KxB = jnp.einsum("ikb,ib->kb", x_dxKxB, w_dxB) + task.noise_std * g_DxKxB[d]
  stats = ContextStatistics(factor_DxKxB=jnp.concatenate([x_dxKxB, y_KxB[None]], axis=0), w_dxB=w_dxB)
  return sharding.shard_batch(stats, axis=-1)


def statistic_matrix(stats: ContextStatistics, n: int) -> jax.Array:
  """S = F F^T / n as (B, D, D), batch first like the token path's statistics."""
  f = stats.factor_DxKxB
  return jnp.einsum("ikb,jkb->bij", f, f) / n
