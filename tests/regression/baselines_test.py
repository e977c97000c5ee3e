"""Tests for the closed-form in-context predictors (icl_theory/baselines.py)."""

from __future__ import annotations

import math

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import baselines
from icl_theory.regression import theory
from icl_theory.regression.task import Prompts, RegressionTask, sample_prompts
from icl_theory.engine.validation import ConfigError

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

  @pytest.mark.slow
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



def _gd_closed_form(prompts: Prompts, lr: float, steps: int, precond: np.ndarray | None = None) -> np.ndarray:
  """x_query^T (I - (I - lr P Sh)^k) Sh^-1 g in float64: k GD steps from 0 summed as a geometric series."""
  x, y, xq = _f64(prompts.x), _f64(prompts.y), _f64(prompts.x_query)
  n, d = x.shape[1], x.shape[2]
  p = np.eye(d) if precond is None else _f64(precond)
  out = []
  for b in range(x.shape[0]):
    sh, g = x[b].T @ x[b] / n, x[b].T @ y[b] / n
    contraction = np.linalg.matrix_power(np.eye(d) - lr * p @ sh, steps)
    out.append(xq[b] @ (np.eye(d) - contraction) @ np.linalg.solve(sh, g))
  return np.array(out)


class MultiStepGDTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_step_is_one_step_gd(self):
    task = _task()
    prompts = sample_prompts(jax.random.PRNGKey(6), task, _FEW)
    lr, precond = 0.41, jnp.asarray(np.linalg.inv(_f64(task.cov_x)), jnp.float32)
    multi = self.variant(baselines.multi_step_gd, static_argnums=2)
    one = multi(prompts, lr, 1)
    chex.assert_shape(one, (_FEW,))
    scale = float(jnp.abs(one).max())
    chex.assert_trees_all_close(one, baselines.one_step_gd(prompts, lr), atol=10 * _EPS32 * scale)
    pre = multi(prompts, lr, 1, precond)
    chex.assert_trees_all_close(pre, baselines.preconditioned_gd(prompts, lr * precond),
                                atol=10 * _EPS32 * float(jnp.abs(pre).max()))

  @chex.variants(with_jit=True, without_jit=True)
  def test_k_steps_are_the_geometric_series(self):
    # n > d: Sh is invertible and w_k = (I - (I - lr P Sh)^k) Sh^-1 g exactly.
    task = _task(n=12)
    prompts = sample_prompts(jax.random.PRNGKey(7), task, _FEW)
    precond = np.diag([1.0, 0.5, 2.0])
    multi = self.variant(baselines.multi_step_gd, static_argnums=2)
    for steps, p in ((2, None), (5, None), (5, precond)):
      got = _f64(multi(prompts, 0.15, steps, None if p is None else jnp.asarray(p, jnp.float32)))
      expected = _gd_closed_form(prompts, 0.15, steps, p)
      np.testing.assert_allclose(got, expected, atol=100 * _EPS32 * np.abs(expected).max(), err_msg=str(steps))

  def test_per_step_sizes_and_trailing_zero_steps(self):
    prompts = sample_prompts(jax.random.PRNGKey(8), _task(), _FEW)
    two = baselines.multi_step_gd(prompts, jnp.array([0.3, 0.1]), 2)
    padded = baselines.multi_step_gd(prompts, jnp.array([0.3, 0.1, 0.0, 0.0]), 4)
    chex.assert_trees_all_close(two, padded, atol=0.0)  # a zero step leaves w unchanged, bit for bit
    # Two steps of different sizes by hand: w1 = a g, w2 = w1 + b (g - Sh w1).
    sigma_hat, g = (_f64(a) for a in baselines.gd_statistics(prompts))
    w2 = 0.3 * g + 0.1 * (g - np.einsum("bde,be->bd", sigma_hat, 0.3 * g))
    expected = np.einsum("bd,bd->b", _f64(prompts.x_query), w2)
    np.testing.assert_allclose(two, expected, atol=100 * _EPS32 * np.abs(expected).max())

  def test_converges_to_ols_when_n_exceeds_d(self):
    task = _task(n=30)
    prompts = sample_prompts(jax.random.PRNGKey(9), task, _FEW)
    sigma_hat = _f64(baselines.gd_statistics(prompts)[0])
    eigs = np.linalg.eigvalsh(sigma_hat)
    lr = 1.0 / eigs.max()  # every mode contracts by 1 - lr lambda in [0, 1)
    ols = _f64(baselines.ols(prompts))
    worst = (1 - lr * eigs.min()) ** np.array([5, 2000])  # the slowest mode's remaining fraction
    assert worst[0] > 0.1 and worst[1] < 1e-12, worst  # not there after 5 steps; there after 2000
    far, near = (_f64(baselines.multi_step_gd(prompts, lr, k)) for k in (5, 2000))
    scale = np.abs(ols).max()
    self.assertGreater(np.abs(far - ols).max(), 1e-3 * scale)
    cond = eigs.max(axis=-1) / eigs.min(axis=-1)
    np.testing.assert_allclose(near, ols, atol=100 * _EPS32 * cond.max() * scale)

  def test_bad_step_counts_are_refused(self):
    prompts = sample_prompts(jax.random.PRNGKey(10), _task(), 2)
    with self.assertRaisesRegex(ConfigError, "steps=0"):
      baselines.multi_step_gd(prompts, 0.1, 0)
    with self.assertRaisesRegex(ConfigError, r"lr of shape \(3,\).*steps=2"):
      baselines.multi_step_gd(prompts, jnp.ones(3), 2)


_MC = 2**15


class StepSizeSearchTest(absltest.TestCase):

  def test_one_step_risk_is_the_closed_form(self):
    task = _task(n=10)
    lrs = jnp.array([0.2, float(theory.optimal_gd_lr(task)), 0.5])
    est = baselines.multi_step_gd_risks(jax.random.PRNGKey(11), task, lrs, 1, _MC, jnp.eye(_D))
    for lr, value, stderr in zip(lrs, est.value, est.stderr):
      exact = float(theory.gamma_risk(lr * jnp.eye(_D), task))
      self.assertLess(abs(float(value) - exact), _Z * float(stderr), (float(lr), float(value), exact))

  def test_search_finds_the_minimum_of_its_own_curve(self):
    # One step: the Monte Carlo risk on the search's prompts is the quadratic A - 2 B lr + C lr^2,
    # with A, B, C the means of y_q^2, y_q u and u^2 over those prompts, u = x_query^T g.
    task, key = _task(n=10), jax.random.PRNGKey(12)
    found = baselines.best_multi_step_gd_lr(task, key, 1, _MC)

    def moments(prompts):
      u, yq = baselines.one_step_gd(prompts, 1.0), prompts.y_query
      b, c = yq * u, u * u
      return jnp.stack([(yq * yq).sum(), b.sum(), c.sum(), (b * b).sum(), (c * c).sum(), (b * c).sum()])

    sums, count = theory.mc_sums(key, task, _MC, moments)
    a, b, c, bb, cc, bc = _f64(sums) / count
    curve = lambda lr: a - 2 * b * lr + c * lr**2
    lr_min, best = b / c, curve(b / c)
    # float32 sums of 2^15 terms hold the risk to ~1e-6 of itself: the search is at the minimum to that.
    self.assertLess(curve(found.lr) - best, 1e-5 * best, (found.lr, lr_min))
    self.assertLess(abs(found.risk - best), 1e-5 * best)
    # The curve's minimiser B/C estimates eta*: within _Z delta-method standard errors of a ratio of means.
    var = (bb - b * b) - 2 * lr_min * (bc - b * c) + lr_min**2 * (cc - c * c)
    stderr = math.sqrt(var / count) / c
    eta = float(theory.optimal_gd_lr(task))
    self.assertLess(abs(lr_min - eta), _Z * stderr, (lr_min, eta, stderr))

  @pytest.mark.slow  # 2.7 s cold; the search's own-curve test above stays in the fast set
  def test_search_beats_a_dense_grid_on_the_same_prompts(self):
    task, key, steps = _task(d=_D, n=8, cov_x="identity", cov_w="identity"), jax.random.PRNGKey(13), 3
    found = baselines.best_multi_step_gd_lr(task, key, steps, _MC)
    dense = jnp.linspace(0.0, 2.0, 401)
    risks = baselines.multi_step_gd_risks(key, task, dense, steps, _MC, jnp.eye(_D)).value
    self.assertLessEqual(found.risk, float(risks.min()) * (1 + 1e-5))
    self.assertGreater(found.lr, 0.0)

  @pytest.mark.slow
  def test_best_risk_falls_with_more_steps_when_n_exceeds_d(self):
    # n = 20 >> d = 3: more steps move GD towards least squares, nearly Bayes here. Step sizes are
    # searched on one key, risks compared on another, paired on the same prompts.
    task = _task(n=20, cov_x="identity", cov_w="identity")
    lrs = [baselines.best_multi_step_gd_lr(task, jax.random.PRNGKey(14), k, _MC).lr for k in (1, 2, 3)]
    prompts = sample_prompts(jax.random.PRNGKey(15), task, _MC)
    err2 = [(_f64(baselines.multi_step_gd(prompts, lr, k)) - _f64(prompts.y_query)) ** 2
            for k, lr in zip((1, 2, 3), lrs)]
    for k in (1, 2):
      diff = err2[k - 1] - err2[k]
      mean, stderr = diff.mean(), diff.std(ddof=1) / math.sqrt(diff.size)
      self.assertGreater(mean, _Z * stderr, (k, lrs, mean, stderr))
    # One step at its searched size is plain GD at eta*, whose risk is exact.
    mean, stderr = err2[0].mean(), err2[0].std(ddof=1) / math.sqrt(_MC)
    self.assertLess(abs(mean - float(theory.optimal_risk(task))), _Z * stderr)


if __name__ == "__main__":
  absltest.main()
