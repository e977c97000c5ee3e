"""Closed forms for one-step preconditioned GD, y_hat = x_query^T Gamma g, g = (1/n) sum_i y_i x_i.

For Gaussian data (docs/theory.md, Part A), with c = tr(Sx Sw) + sigma^2 and
H = E[g g^T] = ((n+1)/n) Sx Sw Sx + (c/n) Sx:

    R(Gamma) = c - 2 tr(Sx Gamma Sx Sw) + tr(Gamma^T Sx Gamma H)
    Gamma*   = Sw Sx H^-1,    R* = c - tr(Sx Gamma* Sx Sw)

Everything here is jnp and pure, so it jits and vmaps over stacked tasks. The
Monte Carlo estimators (`bayes_risk`, `optimal_gamma_mc`, `optimal_gd_lr_mc`,
`gamma_risk_mc`) return an `Estimate` with its standard error, and the last
three work for any response.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_theory.engine import precision
from icl_theory.regression import statistics
from icl_theory.regression.task import Prompts, RegressionTask, sample_prompts

_CHUNK = 8192  # prompts per Monte Carlo chunk: bounds memory, whatever num_samples is


class Estimate(NamedTuple):
  """A Monte Carlo estimate and its standard error (same shape)."""
  value: jax.Array
  stderr: jax.Array


def _require_gaussian(task: RegressionTask, what: str) -> None:
  if not task.is_gaussian:
    raise ValueError(f"{what} is exact only for response='linear' (got response={task.response!r}); "
                     "use the Monte Carlo estimators (optimal_gamma_mc, gamma_risk_mc) instead")


def moments(task: RegressionTask) -> tuple[jax.Array, jax.Array]:
  """c = E[y_q^2] = tr(Sx Sw) + sigma^2 and H = E[g g^T] = ((n+1)/n) Sx Sw Sx + (c/n) Sx (linear responses)."""
  sx, sw = task.cov_x, task.cov_w
  c = jnp.trace(sx @ sw) + task.noise_std**2
  n = task.n
  h = ((n + 1) / n) * sx @ sw @ sx + (c / n) * sx
  return c, h


def gd_features(prompts: Prompts) -> tuple[jax.Array, jax.Array]:
  """g = (1/n) sum_i y_i x_i per prompt (B, d), and x_query (B, d)."""
  g_BxD = jnp.einsum("bn,bnd->bd", prompts.y, prompts.x) / prompts.x.shape[1]
  return g_BxD, prompts.x_query


@precision.scoped
def gamma_risk(gamma: jax.Array, task: RegressionTask) -> jax.Array:
  """Exact population risk of the predictor x_query^T Gamma g (linear responses)."""
  _require_gaussian(task, "gamma_risk")
  sx, sw = task.cov_x, task.cov_w
  c, h = moments(task)
  return c - 2 * jnp.trace(sx @ gamma @ sx @ sw) + jnp.trace(gamma.T @ sx @ gamma @ h)


@precision.scoped
def optimal_gamma(task: RegressionTask) -> jax.Array:
  """Gamma* = Sw Sx H^-1, the global optimum of one LSA layer (linear responses)."""
  _require_gaussian(task, "optimal_gamma")
  _, h = moments(task)
  # Gamma*^T = H^-1 Sx Sw since H is symmetric.
  return jnp.linalg.solve(h, task.cov_x @ task.cov_w).T


@precision.scoped
def optimal_risk(task: RegressionTask) -> jax.Array:
  """R* = R(Gamma*)."""
  _require_gaussian(task, "optimal_risk")
  c, _ = moments(task)
  return c - jnp.trace(task.cov_x @ optimal_gamma(task) @ task.cov_x @ task.cov_w)


@precision.scoped
def optimal_gd_lr(task: RegressionTask) -> jax.Array:
  """The best plain-GD step eta (Gamma = eta I); n / (n + d + 1 + sigma^2) when isotropic."""
  _require_gaussian(task, "optimal_gd_lr")
  _, h = moments(task)
  sx = task.cov_x
  return jnp.trace(sx @ sx @ task.cov_w) / jnp.trace(sx @ h)


# ----------------------------------------------------------------------------------------
# Monte Carlo: sums accumulated over fixed-size chunks of prompts, in one compiled loop.


def mc_sums(key: jax.Array, task: RegressionTask, num_samples: int, stats_fn, sample=sample_prompts):
  """Sums of stats_fn(sample(key_i, task, chunk)) over ceil(num_samples / chunk) chunks; returns (sums, count).

  `sample` draws a chunk of contexts: token prompts by default, or any sampler of that signature
  (`bayes_risk` draws only the covariates' Gram factor).
  """
  chunk = min(_CHUNK, num_samples)
  num_chunks = -(-num_samples // chunk)

  def body(total, i):
    return jax.tree.map(jnp.add, total, stats_fn(sample(jax.random.fold_in(key, i), task, chunk))), None

  shapes = jax.eval_shape(lambda k: stats_fn(sample(k, task, chunk)), key)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, jnp.arange(num_chunks))
  return total, num_chunks * chunk


def mean_and_stderr(sums: jax.Array, sq_sums: jax.Array, count: int) -> Estimate:
  mean = sums / count
  var = jnp.maximum(sq_sums / count - mean**2, 0.0) * count / (count - 1)
  return Estimate(mean, jnp.sqrt(var / count))


@precision.scoped
@functools.partial(jax.jit, static_argnames="num_samples")
def prediction_risk_mc(key: jax.Array, task: RegressionTask, num_samples: int, predict) -> Estimate:
  """Monte Carlo risk E[(predict(prompts) - y_query)^2] of any predictor; with its stderr.

  `predict` maps Prompts to (B,) predictions; it is traced as an argument, so it
  must be a pytree callable such as `jax.tree_util.Partial(fn, *arrays)`.
  """
  def stats(prompts):
    err2 = (predict(prompts) - prompts.y_query) ** 2
    return err2.sum(), (err2**2).sum()

  (s, s2), count = mc_sums(key, task, num_samples, stats)
  return mean_and_stderr(s, s2, count)


def gamma_predict(gamma: jax.Array, prompts: Prompts) -> jax.Array:
  """x_query^T Gamma g for each prompt."""
  g_BxD, xq_BxD = gd_features(prompts)
  return jnp.einsum("bd,de,be->b", xq_BxD, gamma, g_BxD)


@precision.scoped
def gamma_risk_mc(gamma: jax.Array, task: RegressionTask, key: jax.Array, num_samples: int) -> Estimate:
  """Monte Carlo risk of x_query^T Gamma g, for any response."""
  return prediction_risk_mc(key, task, num_samples, jax.tree_util.Partial(gamma_predict, gamma))


@precision.scoped
def bayes_posterior(x_NxD: jax.Array, y_N: jax.Array, cov_w: jax.Array, noise_var: jax.Array):
  """Posterior mean and covariance of w given one context, prior N(0, cov_w), noise variance.

  With cov_w = L L^T and w = L v, the posterior of v follows from the SVD
  X L = U diag(s) V^T: along a seen direction (s > 0) the mean is s/(s^2+sigma^2) u^T y
  and the variance sigma^2/(s^2+sigma^2); unseen directions keep the prior. The SVD
  (not the Gram matrix, whose condition number is squared) keeps sigma = 0 with
  n close to d exact in float32. The covariance is assembled from those variances,
  V diag(sigma^2/(s^2+sigma^2), ..., 1, ...) V^T, never as I - V diag(s^2/(s^2+sigma^2)) V^T:
  that subtraction cancels where s^2 >> sigma^2 (it biased the Bayes risk by 0.1%, and
  single contexts' by up to 4%, at sigma = 0.01, n = 16-64, d = 5). A long context
  (n > d) is first reduced to the d x d triangle R of X L = Q R, which has X L's
  singular values and right vectors: batched SVDs of small square matrices are fast,
  while XLA's GPU SVD of a batch of tall ones loops over the batch. Q stays unformed
  (the QR of [X L, y] carries Q^T y): a formed Q put a LAPACK call inside several Monte
  Carlo loops of one CPU program, which the CPU runtime cannot run safely.
  """
  chol = jnp.linalg.cholesky(cov_w)
  xl_NxD = x_NxD @ chol
  d = x_NxD.shape[1]
  if x_NxD.shape[0] > d:
    # The triangle of [X L, y] = Q [[R, Q^T y], [0, *]]: R and y in Q's coordinates, Q never formed.
    r_DxD1 = jnp.linalg.qr(jnp.concatenate([xl_NxD, y_N[:, None]], axis=1), mode="r")[:d]
    xl_NxD, y_N = r_DxD1[:, :d], r_DxD1[:, d]
  # All D right vectors: when n < d the last d - n span X L's null space (unseen, prior variance).
  # Here K = N <= D (a long context was reduced to its triangle), so U is K x K.
  u_KxK, s_K, vt_DxD = jnp.linalg.svd(xl_NxD, full_matrices=True)
  k = s_K.shape[0]
  seen = s_K > jnp.finfo(s_K.dtype).eps * max(x_NxD.shape) * s_K.max()
  denom = jnp.where(seen, s_K**2 + noise_var, 1.0)
  mean_v = vt_DxD[:k].T @ (jnp.where(seen, s_K / denom, 0.0) * (u_KxK.T @ y_N))
  # The posterior variance along each right vector, computed as it is, without a cancellation.
  var_D = jnp.concatenate([jnp.where(seen, noise_var / denom, 1.0), jnp.ones(d - k, s_K.dtype)])
  cov_v = (vt_DxD.T * var_D) @ vt_DxD
  return chol @ mean_v, chol @ cov_v @ chol.T


@precision.scoped
def ols_risk(task: RegressionTask) -> jax.Array:
  """Exact risk of least squares for Gaussian x and n >= d + 2: sigma^2 (1 + d / (n - d - 1)).

  E[(x_q^T (w_hat - w))^2] = sigma^2 tr(Sx E[(X^T X)^-1]) and E[(X^T X)^-1] is the
  inverse Wishart's mean Sx^-1 / (n - d - 1): neither Sx nor the prior matters.
  Below n = d + 2 the mean is infinite (n = d, d + 1) or OLS is the minimum-norm
  interpolant (n < d): estimate those by Monte Carlo.
  """
  _require_gaussian(task, "ols_risk")
  if task.n < task.d + 2:
    raise ValueError(f"ols_risk has no finite closed form for n={task.n} < d + 2 = {task.d + 2}; "
                     "use prediction_risk_mc with baselines.ols")
  return task.noise_std**2 * (1.0 + task.d / (task.n - task.d - 1))


@precision.scoped
@functools.partial(jax.jit, static_argnames="num_samples")
def bayes_risk(task: RegressionTask, key: jax.Array, num_samples: int) -> Estimate:
  """Risk of the Bayes posterior mean (ridge with the prior): sigma^2 + E_X tr(Sx Cov[w | X]).

  Cov[w | X] depends on the context through X^T X alone, so each context is drawn as
  the (K, d) factor of X^T X that `statistics.covariate_factor` samples, K = min(n, d):
  exact in law, and at any n as cheap as at n = d (the n x d tokens, and their QR, grow with n).
  """
  _require_gaussian(task, "bayes_risk")
  noise_var = task.noise_std**2
  posterior_cov = lambda xt_DxK: bayes_posterior(xt_DxK.T, jnp.zeros(xt_DxK.shape[1]), task.cov_w, noise_var)[1]

  def stats(xt_DxKxB):
    covs = jax.vmap(posterior_cov, in_axes=2)(xt_DxKxB)
    # tr(Sx Cov) >= 0 for a PSD posterior covariance; clip the float round-off below 0.
    r_B = noise_var + jnp.maximum(jnp.einsum("de,bed->b", task.cov_x, covs), 0.0)
    return r_B.sum(), (r_B**2).sum()

  (s, s2), count = mc_sums(key, task, num_samples, stats, sample=statistics.covariate_factor)
  return mean_and_stderr(s, s2, count)


@precision.scoped
@functools.partial(jax.jit, static_argnames="num_samples")
def optimal_gamma_mc(task: RegressionTask, key: jax.Array, num_samples: int) -> Estimate:
  """Gamma* by least squares of y_query on the d^2 features x_query (x) g; any response.

  Standard errors are the heteroscedasticity-robust (sandwich) ones: two passes
  over the same prompts, the second for the residuals.
  """
  d = task.d

  def features(prompts):
    g_BxD, xq_BxD = gd_features(prompts)
    return jnp.einsum("bi,bj->bij", xq_BxD, g_BxD).reshape(-1, d * d)

  def normal_eq(prompts):
    f_BxF = features(prompts)
    return f_BxF.T @ f_BxF, f_BxF.T @ prompts.y_query

  (gram, rhs), count = mc_sums(key, task, num_samples, normal_eq)
  beta = jnp.linalg.solve(gram, rhs)

  def meat(prompts):
    f_BxF = features(prompts)
    r_B = prompts.y_query - f_BxF @ beta
    return (f_BxF * r_B[:, None] ** 2).T @ f_BxF

  m, _ = mc_sums(key, task, num_samples, meat)
  bread = jnp.linalg.inv(gram)
  cov = bread @ m @ bread
  return Estimate(beta.reshape(d, d), jnp.sqrt(jnp.diag(cov)).reshape(d, d))


@precision.scoped
@functools.partial(jax.jit, static_argnames="num_samples")
def optimal_gd_lr_mc(task: RegressionTask, key: jax.Array, num_samples: int) -> Estimate:
  """The best plain-GD step eta_f = E[y_query x_query^T g] / E[g^T cov_x g], for any response.

  The denominator is E[(x_query^T g)^2] with the query integrated out exactly
  (x_query is independent of g). With cov_x = I this is docs/theory.md's
  E[y_q x_q^T g] / E[g^T g], and eta_f I = Gamma* for a rotation-invariant f.
  The standard error is the delta-method one for a ratio of means.
  """
  def stats(prompts):
    g_BxD, xq_BxD = gd_features(prompts)
    a = prompts.y_query * jnp.einsum("bd,bd->b", xq_BxD, g_BxD)
    b = jnp.einsum("bd,de,be->b", g_BxD, task.cov_x, g_BxD)
    return a.sum(), b.sum(), (a * a).sum(), (b * b).sum(), (a * b).sum()

  (sa, sb, saa, sbb, sab), count = mc_sums(key, task, num_samples, stats)
  ma, mb = sa / count, sb / count
  eta = ma / mb
  var_a, var_b, cov_ab = saa / count - ma**2, sbb / count - mb**2, sab / count - ma * mb
  var_eta = (var_a - 2 * eta * cov_ab + eta**2 * var_b) / mb**2 / count
  return Estimate(eta, jnp.sqrt(jnp.maximum(var_eta, 0.0)))
