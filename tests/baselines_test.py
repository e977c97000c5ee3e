"""Tests for the closed-form in-context predictors (icl_theory/baselines.py)."""

from __future__ import annotations

import math

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from icl_theory import baselines
from icl_theory import theory
from icl_theory.tasks.regression import Prompts, RegressionTask, sample_prompts

_Z = 4.0
_EPS32 = float(np.finfo(np.float32).eps)
_D, _N = 3, 6
_FEW = 8  # prompts for the exact, per-prompt checks


def _f64(a) -> np.ndarray:
  return np.asarray(a, np.float64)


def _task(**kwargs) -> RegressionTask:
  return RegressionTask(**{**dict(d=_D, n=_N, cov_x="geometric:5@1", cov_w="geometric:3@2",
                                  noise_std=0.5), **kwargs})


def _w_hat(prompts: Prompts) -> np.ndarray:
  """The w that explains noiseless linear prompts exactly (float64 least squares)."""
  return np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(_f64(prompts.x), _f64(prompts.y))])


class PredictorTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_step_gd_is_preconditioned_gd_with_scaled_identity(self):
    prompts = sample_prompts(jax.random.PRNGKey(0), _task(), _FEW)
    lr = 0.37
    gd = self.variant(baselines.one_step_gd)(prompts, lr)
    pgd = self.variant(baselines.preconditioned_gd)(prompts, lr * jnp.eye(_D))
    chex.assert_shape((gd, pgd), (_FEW,))
    chex.assert_trees_all_close(gd, pgd, rtol=10 * _EPS32, atol=10 * _EPS32 * float(jnp.abs(pgd).max()))
    # And both are x_query^T (lr g) with g the mean of y_i x_i.
    g_BxD = np.einsum("bn,bnd->bd", _f64(prompts.y), _f64(prompts.x)) / _N
    expected = lr * np.einsum("bd,bd->b", _f64(prompts.x_query), g_BxD)
    np.testing.assert_allclose(gd, expected, atol=100 * _EPS32 * np.abs(expected).max())

  @chex.variants(with_jit=True, without_jit=True)
  def test_ridge_is_the_explicit_formula(self):
    task = _task(noise_std=0.8)
    prompts = sample_prompts(jax.random.PRNGKey(1), task, _FEW)
    pred = self.variant(baselines.ridge)(prompts, task)
    chex.assert_shape(pred, (_FEW,))
    sw, noise_var = _f64(task.cov_w), 0.64
    for b in range(_FEW):
      x, y, xq = _f64(prompts.x[b]), _f64(prompts.y[b]), _f64(prompts.x_query[b])
      a = x.T @ x + noise_var * np.linalg.inv(sw)
      w = np.linalg.solve(a, x.T @ y)
      # float32 rounding, amplified by the conditioning of the regularised Gram in the prior's frame.
      chol = np.linalg.cholesky(sw)
      cond = np.linalg.cond(chol.T @ x.T @ x @ chol + noise_var * np.eye(_D))
      tol = 10 * _EPS32 * cond * np.linalg.norm(w) * np.linalg.norm(xq)
      self.assertLess(abs(float(pred[b]) - xq @ w), tol, b)

  @chex.variants(with_jit=True, without_jit=True)
  def test_noiseless_ridge_and_ols_interpolate(self):
    # sigma = 0, n >= d: both recover w exactly, so they predict y_query = w^T x_query.
    task = _task(noise_std=0.0)
    prompts = sample_prompts(jax.random.PRNGKey(2), task, _FEW)
    ridge = self.variant(baselines.ridge)(prompts, task)
    ols = self.variant(baselines.ols)(prompts)
    chex.assert_shape((ridge, ols), (_FEW,))
    w_BxD = _w_hat(prompts)
    chol = np.linalg.cholesky(_f64(task.cov_w))
    for b in range(_FEW):
      x, yq = _f64(prompts.x[b]), float(prompts.y_query[b])
      scale = np.linalg.norm(w_BxD[b]) * np.linalg.norm(_f64(prompts.x_query[b]))
      # OLS goes through the SVD (error ~ eps cond(X)); ridge through the Gram (~ eps cond(X L)^2).
      self.assertLess(abs(float(ols[b]) - yq), 10 * _EPS32 * np.linalg.cond(x) * scale, b)
      self.assertLess(abs(float(ridge[b]) - yq), 10 * _EPS32 * np.linalg.cond(x @ chol) ** 2 * scale, b)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ols_is_minimum_norm_when_underdetermined(self):
    d, n = 5, 3
    task = RegressionTask(d=d, n=n, cov_x="geometric:4@0", noise_std=0.3)
    prompts = sample_prompts(jax.random.PRNGKey(3), task, _FEW)
    pred = self.variant(baselines.ols)(prompts)
    chex.assert_shape(pred, (_FEW,))
    for b in range(_FEW):
      x, y, xq = _f64(prompts.x[b]), _f64(prompts.y[b]), _f64(prompts.x_query[b])
      w = np.linalg.pinv(x) @ y
      np.testing.assert_allclose(x @ w, y, atol=1e-10 * np.abs(y).max())  # interpolates the context
      tol = 10 * _EPS32 * np.linalg.cond(x) * np.linalg.norm(w) * np.linalg.norm(xq)
      self.assertLess(abs(float(pred[b]) - xq @ w), tol, b)

  @chex.variants(with_jit=True, without_jit=True)
  def test_noiseless_ridge_is_minimum_prior_norm_when_underdetermined(self):
    # sigma = 0, n < d: the posterior mean is the interpolant of least w^T Sw^-1 w,
    # Sw X^T (X Sw X^T)^-1 y; for Sw = I it is the OLS minimum-norm solution.
    d, n = 5, 3
    task = RegressionTask(d=d, n=n, cov_x="geometric:4@0", cov_w="diag:0.5,1,2,3,4@1")
    prompts = sample_prompts(jax.random.PRNGKey(4), task, _FEW)
    pred = self.variant(baselines.ridge)(prompts, task)
    chex.assert_shape(pred, (_FEW,))
    sw = _f64(task.cov_w)
    chol = np.linalg.cholesky(sw)
    for b in range(_FEW):
      x, y, xq = _f64(prompts.x[b]), _f64(prompts.y[b]), _f64(prompts.x_query[b])
      w = sw @ x.T @ np.linalg.solve(x @ sw @ x.T, y)
      tol = 10 * _EPS32 * np.linalg.cond(x @ chol) ** 2 * np.linalg.norm(w) * np.linalg.norm(xq)
      self.assertLess(abs(float(pred[b]) - xq @ w), tol, b)


class RiskTest(absltest.TestCase):

  def test_ridge_beats_ols_and_gd_on_noisy_data(self):
    # n - d > 3 keeps the fourth moment of the OLS error finite, so its stderr is meaningful.
    task = RegressionTask(d=_D, n=12, cov_x="geometric:5@1", cov_w="geometric:3@2", noise_std=1.0)
    prompts = sample_prompts(jax.random.PRNGKey(5), task, 2**15)
    y_q = _f64(prompts.y_query)
    err2 = lambda pred: (_f64(pred) - y_q) ** 2
    ridge = err2(baselines.ridge(prompts, task))
    rivals = {
        "ols": err2(baselines.ols(prompts)),
        "one_step_gd": err2(baselines.one_step_gd(prompts, theory.optimal_gd_lr(task))),
        "preconditioned_gd": err2(baselines.preconditioned_gd(prompts, theory.optimal_gamma(task))),
    }
    for name, rival in rivals.items():
      # Paired differences on the same prompts: the shared noise cancels.
      diff = rival - ridge
      mean, stderr = diff.mean(), diff.std(ddof=1) / math.sqrt(diff.size)
      self.assertGreater(mean, _Z * stderr, (name, mean, stderr))


if __name__ == "__main__":
  absltest.main()
