"""Closed forms of icl_theory/theory.py against Monte Carlo and against each other."""

from __future__ import annotations

import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import baselines
from icl_theory.regression import theory
from icl_theory.regression.task import RegressionTask, sample_prompts

_Z = 4.0        # a single Monte Carlo check holds within this many standard errors
_Z_MAX = 4.5    # the largest |z| over d^2 entries (allows for the multiplicity)
_EPS32 = float(np.finfo(np.float32).eps)
_D, _N = 3, 6
_NUM_SAMPLES = 2**17  # for the jitted Monte Carlo estimators
_BATCH = 2**16        # for the prompts sampled here


def _task(**kwargs) -> RegressionTask:
  """Non-isotropic, rotated covariances, noise > 0: the general case."""
  return RegressionTask(**{**dict(d=_D, n=_N, cov_x="geometric:5@1", cov_w="geometric:3@2",
                                  noise_std=0.5), **kwargs})


def _f64(a) -> np.ndarray:
  return np.asarray(a, np.float64)


def _moments64(task: RegressionTask) -> tuple[float, np.ndarray]:
  """c and H = E[g g^T] in float64, written out from THEORY.md."""
  sx, sw, n = _f64(task.cov_x), _f64(task.cov_w), task.n
  c = np.trace(sx @ sw) + float(task.noise_std) ** 2
  return c, (n + 1) / n * sx @ sw @ sx + c / n * sx


def _mean_and_stderr(samples_B) -> tuple[float, float]:
  samples_B = _f64(samples_B)
  return float(samples_B.mean()), float(samples_B.std(ddof=1) / math.sqrt(samples_B.size))


def _isotropic_eta(d: int, n: int, noise_std: float) -> float:
  return n / (n + d + 1 + noise_std**2)


class ClosedFormTest(parameterized.TestCase):
  """Identities between the closed forms; tolerances are float32 rounding times a condition number."""

  @parameterized.parameters((3, 6, 0.0), (3, 6, 0.5), (5, 2, 1.0), (1, 1, 0.3), (8, 40, 2.0))
  def test_isotropic_optimum(self, d: int, n: int, noise_std: float):
    task = RegressionTask(d=d, n=n, noise_std=noise_std)
    eta = _isotropic_eta(d, n, noise_std)
    tol = 10 * d * _EPS32
    np.testing.assert_allclose(theory.optimal_gamma(task), eta * np.eye(d), rtol=tol, atol=tol)
    np.testing.assert_allclose(theory.optimal_gd_lr(task), eta, rtol=tol)
    expected_risk = d * (d + 1 + noise_std**2) / (n + d + 1 + noise_std**2) + noise_std**2
    np.testing.assert_allclose(theory.optimal_risk(task), expected_risk, rtol=tol)
    # With Gamma* = eta* I, one plain GD step is already optimal.
    np.testing.assert_allclose(theory.gamma_risk(eta * jnp.eye(d), task), expected_risk, rtol=tol)

  def test_inverse_prior_gives_preconditioned_gd(self):
    task = _task(cov_x="geometric:8@3", cov_w="inverse", noise_std=0.7)
    eta = _isotropic_eta(task.d, task.n, 0.7)
    expected = eta * np.linalg.inv(_f64(task.cov_x))
    cond = np.linalg.cond(_f64(task.cov_x))
    np.testing.assert_allclose(theory.optimal_gamma(task), expected,
                               atol=10 * task.d * _EPS32 * cond * np.abs(expected).max())

  def test_identity_prior_gives_ahn_zhang_form(self):
    task = _task(cov_w=None, noise_std=0.7)
    sx, n = _f64(task.cov_x), task.n
    expected = n * np.linalg.inv((n + 1) * sx + (np.trace(sx) + 0.49) * np.eye(task.d))
    cond = np.linalg.cond((n + 1) * sx + np.eye(task.d))
    np.testing.assert_allclose(theory.optimal_gamma(task), expected,
                               atol=10 * task.d * _EPS32 * cond * np.abs(expected).max())

  def test_general_optimum_is_ridge_with_mean_gram(self):
    # Gamma* = n [(n+1) Sx + c Sw^-1]^-1 for any invertible Sw (THEORY.md, "The optimum").
    task = _task()
    c, h = _moments64(task)
    sx, sw, n = _f64(task.cov_x), _f64(task.cov_w), task.n
    expected = n * np.linalg.inv((n + 1) * sx + c * np.linalg.inv(sw))
    np.testing.assert_allclose(expected, sw @ sx @ np.linalg.inv(h), rtol=1e-10)
    cond = np.linalg.cond(h) * np.linalg.cond(sx)
    np.testing.assert_allclose(theory.optimal_gamma(task), expected,
                               atol=10 * task.d * _EPS32 * cond * np.abs(expected).max())
    expected_risk = c - np.trace(sx @ expected @ sx @ sw)
    np.testing.assert_allclose(theory.optimal_risk(task), expected_risk, rtol=10 * task.d * _EPS32 * cond)

  def test_gamma_risk_matches_the_written_formula(self):
    task = _task()
    c, h = _moments64(task)
    sx, sw = _f64(task.cov_x), _f64(task.cov_w)
    gamma = _f64(jax.random.normal(jax.random.PRNGKey(0), (_D, _D)))
    expected = c - 2 * np.trace(sx @ gamma @ sx @ sw) + np.trace(gamma.T @ sx @ gamma @ h)
    np.testing.assert_allclose(theory.gamma_risk(jnp.asarray(gamma, jnp.float32), task), expected,
                               rtol=100 * _EPS32)
    np.testing.assert_allclose(theory.gamma_risk(jnp.zeros((_D, _D)), task), c, rtol=10 * _EPS32)

  def test_optimal_gamma_is_a_stationary_point(self):
    task = _task()
    gamma_star = theory.optimal_gamma(task)
    grad_fn = jax.grad(theory.gamma_risk)
    scale = float(jnp.abs(grad_fn(jnp.zeros((_D, _D)), task)).max())  # |2 Sx Sw Sx|
    _, h = _moments64(task)
    cond = np.linalg.cond(h) * np.linalg.cond(_f64(task.cov_x))
    self.assertLess(float(jnp.abs(grad_fn(gamma_star, task)).max()), 10 * _D * _EPS32 * cond * scale)
    # The analytic gradient -2 Sx Sw Sx + 2 Sx Gamma H, at a random Gamma.
    gamma = jax.random.normal(jax.random.PRNGKey(1), (_D, _D))
    sx, sw = _f64(task.cov_x), _f64(task.cov_w)
    expected = -2 * sx @ sw @ sx + 2 * sx @ _f64(gamma) @ h
    np.testing.assert_allclose(grad_fn(gamma, task), expected, atol=100 * _EPS32 * np.abs(expected).max())

  def test_perturbations_increase_the_risk_quadratically(self):
    task = _task()
    gamma_star = theory.optimal_gamma(task)
    best = float(theory.optimal_risk(task))
    np.testing.assert_allclose(theory.gamma_risk(gamma_star, task), best, rtol=10 * _EPS32)
    c, h = _moments64(task)
    sx = _f64(task.cov_x)
    deltas = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (20, _D, _D))
    for delta in deltas:
      increase = float(theory.gamma_risk(gamma_star + delta, task)) - best
      delta64 = _f64(delta)
      expected = np.trace(delta64.T @ sx @ delta64 @ h)  # exact: the risk is quadratic in Gamma
      self.assertGreater(increase, 0.0)
      np.testing.assert_allclose(increase, expected, atol=100 * _EPS32 * c)

  def test_hessian_is_positive_definite(self):
    task = _task()
    hess = jax.jit(jax.hessian(theory.gamma_risk))(theory.optimal_gamma(task), task).reshape(_D * _D, _D * _D)
    _, h = _moments64(task)
    expected = 2 * np.kron(_f64(task.cov_x), h)  # d^2 R / dGamma_ij dGamma_kl = 2 Sx_ik H_jl
    np.testing.assert_allclose(hess, expected, atol=100 * _EPS32 * np.abs(expected).max())
    eigs = np.linalg.eigvalsh(0.5 * (_f64(hess) + _f64(hess).T))
    self.assertGreater(eigs.min(), 0.1 * np.linalg.eigvalsh(expected).min())

  def test_optimal_gd_lr_minimises_the_risk_along_the_identity(self):
    task = _task()
    eta = theory.optimal_gd_lr(task)
    risk_along = lambda lr: theory.gamma_risk(lr * jnp.eye(_D), task)
    slope_scale = abs(float(jax.grad(risk_along)(0.0)))
    self.assertLess(abs(float(jax.grad(risk_along)(eta))), 100 * _EPS32 * slope_scale)
    # It is the best multiple of I, and no better than Gamma*.
    self.assertLess(float(risk_along(eta)), float(risk_along(1.1 * eta)))
    self.assertLess(float(risk_along(eta)), float(risk_along(0.9 * eta)))
    self.assertLess(float(theory.optimal_risk(task)), float(risk_along(eta)))

  def test_exact_forms_refuse_nonlinear_responses(self):
    task = _task(cov_x=None, cov_w=None, response="relu")
    for fn in (theory.optimal_gamma, theory.optimal_risk, theory.optimal_gd_lr):
      with self.assertRaisesRegex(ValueError, "response='relu'"):
        fn(task)
    with self.assertRaisesRegex(ValueError, "response='relu'"):
      theory.gamma_risk(jnp.eye(_D), task)
    with self.assertRaisesRegex(ValueError, "response='relu'"):
      theory.bayes_risk(task, jax.random.PRNGKey(0), 64)


class MonteCarloTest(parameterized.TestCase):
  """Closed forms against Monte Carlo; every check within a few of its own standard errors."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = _task()
    cls.prompts = sample_prompts(jax.random.PRNGKey(10), cls.task, _BATCH)

  @parameterized.named_parameters(("zero", "zero"), ("optimum", "optimum"), ("random", "random"))
  def test_gamma_risk_against_sampled_prompts(self, which: str):
    task = self.task
    gamma = {"zero": jnp.zeros((_D, _D)),
             "optimum": theory.optimal_gamma(task),
             "random": theory.optimal_gamma(task) + 0.15 * jax.random.normal(jax.random.PRNGKey(3), (_D, _D)),
             }[which]
    err2 = (_f64(theory.gamma_predict(gamma, self.prompts)) - _f64(self.prompts.y_query)) ** 2
    mean, stderr = _mean_and_stderr(err2)
    exact = float(theory.gamma_risk(gamma, task))
    self.assertLess(abs(mean - exact), _Z * stderr, (mean, exact, stderr))

  def test_gamma_predict_is_x_query_gamma_g(self):
    gamma = jax.random.normal(jax.random.PRNGKey(4), (_D, _D))
    x, y = _f64(self.prompts.x[:8]), _f64(self.prompts.y[:8])
    g_BxD = np.einsum("bn,bnd->bd", y, x) / _N
    expected = np.einsum("bd,de,be->b", _f64(self.prompts.x_query[:8]), _f64(gamma), g_BxD)
    head = jax.tree.map(lambda a: a[:8], self.prompts)
    np.testing.assert_allclose(theory.gamma_predict(gamma, head), expected,
                               atol=100 * _EPS32 * np.abs(expected).max())

  def test_gamma_risk_mc(self):
    # Three chunks of the library's own estimator; its stderr is that of a mean of iid errors.
    gamma = theory.optimal_gamma(self.task) + 0.4 * jax.random.normal(jax.random.PRNGKey(5), (_D, _D))
    estimate = theory.gamma_risk_mc(gamma, self.task, jax.random.PRNGKey(11), 3 * 8192)
    exact = float(theory.gamma_risk(gamma, self.task))
    self.assertGreater(float(estimate.stderr), 0.0)
    self.assertLess(abs(float(estimate.value) - exact), _Z * float(estimate.stderr))

  def test_optimal_gamma_mc(self):
    estimate = theory.optimal_gamma_mc(self.task, jax.random.PRNGKey(12), _NUM_SAMPLES)
    chex.assert_shape((estimate.value, estimate.stderr), (_D, _D))
    z = (_f64(estimate.value) - _f64(theory.optimal_gamma(self.task))) / _f64(estimate.stderr)
    self.assertLess(np.abs(z).max(), _Z_MAX, z)
    # The stderr is small enough for the check to mean something: Gamma*'s entries are resolved.
    self.assertLess(_f64(estimate.stderr).max(), 0.05 * np.abs(_f64(theory.optimal_gamma(self.task))).max())

  @pytest.mark.slow
  def test_bayes_risk_against_ridge_errors(self):
    task = self.task
    estimate = theory.bayes_risk(task, jax.random.PRNGKey(13), 8192)
    err2 = (_f64(baselines.ridge(self.prompts, task)) - _f64(self.prompts.y_query)) ** 2
    mean, stderr = _mean_and_stderr(err2)
    combined = math.hypot(stderr, float(estimate.stderr))  # independent keys
    self.assertLess(abs(mean - float(estimate.value)), _Z * combined,
                    (mean, float(estimate.value), combined))
    # Bayes (ridge with the prior) can only beat the best one-step preconditioned GD.
    self.assertLess(float(estimate.value), float(theory.optimal_risk(task)) + _Z * float(estimate.stderr))
    # Never below the noise floor, which only a perfect w would reach.
    self.assertGreater(float(estimate.value), 0.25)

  @parameterized.parameters(("identity", 12), ("geometric:5@1", 12), ("geometric:5@1", 30))
  def test_ols_risk_against_sampled_prompts(self, cov_x: str, n: int):
    # The closed form sigma^2 (1 + d / (n - d - 1)), whatever Sx and Sw.
    task = RegressionTask(d=_D, n=n, cov_x=cov_x, cov_w="geometric:3@2", noise_std=0.7)
    estimate = theory.prediction_risk_mc(jax.random.PRNGKey(n), task, 200_000,
                                         jax.tree_util.Partial(baselines.ols))
    expected = 0.49 * (1 + _D / (n - _D - 1))
    np.testing.assert_allclose(float(theory.ols_risk(task)), expected, rtol=1e-6)
    self.assertLess(abs(float(estimate.value) - expected), _Z * float(estimate.stderr),
                    (float(estimate.value), expected, float(estimate.stderr)))

  def test_ols_risk_refuses_short_prompts(self):
    with self.assertRaisesRegex(ValueError, "n=4 < d \\+ 2"):
      theory.ols_risk(RegressionTask(d=3, n=4, noise_std=1.0))

  # The factor's three samplers (see statistics): chi draws by rejection in the fast set, the
  # Gaussian rows (n < d) and Bartlett's by sums in the slow one (2.4 s each cold).
  @parameterized.parameters((30, 0.5))
  def test_bayes_risk_matches_the_posteriors_of_token_contexts(self, n: int, noise_std: float):
    self._check_bayes_risk_against_token_contexts(n, noise_std)

  @parameterized.parameters((2, 0.5), (_N, 0.1))
  @pytest.mark.slow
  def test_bayes_risk_matches_the_posteriors_of_token_contexts_more(self, n: int, noise_std: float):
    self._check_bayes_risk_against_token_contexts(n, noise_std)

  def _check_bayes_risk_against_token_contexts(self, n: int, noise_std: float):
    # bayes_risk draws each context as a factor of X^T X; the same risk from the posteriors of
    # explicit token contexts (other draws) must agree within the combined standard error.
    task = RegressionTask(d=_D, n=n, cov_x="geometric:5@1", cov_w="geometric:3@2", noise_std=noise_std)
    estimate = theory.bayes_risk(task, jax.random.PRNGKey(15), 2**15)
    prompts = sample_prompts(jax.random.PRNGKey(16), task, 2**15)
    covs = jax.jit(jax.vmap(theory.bayes_posterior, in_axes=(0, 0, None, None)))(
        prompts.x, prompts.y, task.cov_w, noise_std**2)[1]
    mean, stderr = _mean_and_stderr(noise_std**2 + np.einsum("de,bed->b", _f64(task.cov_x), _f64(covs)))
    combined = math.hypot(stderr, float(estimate.stderr))
    self.assertLess(abs(mean - float(estimate.value)), _Z * combined, (mean, float(estimate.value), combined))
    self.assertLess(combined, 0.01 * mean)  # resolved to 1%: the check means something

  @parameterized.parameters((2, 1.0), (_N, 0.0))
  def test_bayes_risk_noiseless_isotropic_is_exact(self, n: int, expected: float):
    # sigma = 0, Sx = Sw = I: Cov[w | X] projects onto the null space of X, so the risk is
    # max(d - n, 0) for every X (zero variance across samples).
    estimate = theory.bayes_risk(RegressionTask(d=_D, n=n), jax.random.PRNGKey(14), 8192)
    np.testing.assert_allclose(float(estimate.value), expected, atol=1e3 * _EPS32 * _D)
    self.assertLess(float(estimate.stderr), 1e3 * _EPS32 * _D)

  def test_bayes_risk_noiseless_square_design_is_zero(self):
    # With n = d and sigma = 0 every X is invertible, so Cov[w | X] = 0 and the risk is 0. (An
    # eigendecomposition of the float32 Gram L^T X^T X L once lost ~1% of 3 x 3 designs here.)
    estimate = theory.bayes_risk(RegressionTask(d=_D, n=_D), jax.random.PRNGKey(14), 8192)
    np.testing.assert_allclose(float(estimate.value), 0.0, atol=1e3 * _EPS32 * _D)

  @parameterized.parameters((2, 0.01), (16, 0.01))
  def test_bayes_posterior_against_float64(self, n: int, noise_std: float):
    self._check_bayes_posterior(n, noise_std)

  @parameterized.parameters((16, 0.001), (40, 0.5))
  @pytest.mark.slow  # the same check at less noise and a longer context (1.4 s each, cold)
  def test_bayes_posterior_against_float64_more(self, n: int, noise_std: float):
    self._check_bayes_posterior(n, noise_std)

  def _check_bayes_posterior(self, n: int, noise_std: float):
    # The posterior of the same contexts in float64, Cov = (X^T X / sigma^2 + Sw^-1)^-1 and mean
    # Cov X^T y / sigma^2. With the variances formed as 1 - s^2/(s^2 + sigma^2) (a cancellation once
    # here), tr(Sx Cov) was off by 0.2% on average at n = 16, sigma = 0.01, and by 2% at sigma = 0.001.
    d = 5
    task = RegressionTask(d=d, n=n, cov_x="geometric:10@1", cov_w="geometric:3@2", noise_std=noise_std)
    prompts = sample_prompts(jax.random.PRNGKey(21), task, 1024)
    mean, cov = jax.jit(jax.vmap(theory.bayes_posterior, in_axes=(0, 0, None, None)))(
        prompts.x, prompts.y, task.cov_w, task.noise_std**2)
    x, y, sx, sw = _f64(prompts.x), _f64(prompts.y), _f64(task.cov_x), _f64(task.cov_w)
    cov64 = np.linalg.inv(np.einsum("bnd,bne->bde", x, x) / noise_std**2 + np.linalg.inv(sw))
    mean64 = np.einsum("bde,bne,bn->bd", cov64, x, y) / noise_std**2
    # The Bayes risk's part tr(Sx Cov): float32 rounding of well-conditioned 5 x 5 factorisations.
    part, part64 = np.einsum("de,bed->b", sx, _f64(cov)), np.einsum("de,bed->b", sx, cov64)
    self.assertLess(abs(part.mean() / part64.mean() - 1), 1e-5)
    self.assertLess(np.max(np.abs(part - part64)) / part64.mean(), 1e-4)
    np.testing.assert_allclose(_f64(mean), mean64, rtol=0, atol=1e-4 * np.abs(mean64).max())

  def test_optimal_gd_lr_mc_linear_isotropic(self):
    noise_std = 0.5
    task = _task(cov_x=None, cov_w=None, noise_std=noise_std)
    estimate = theory.optimal_gd_lr_mc(task, jax.random.PRNGKey(15), _NUM_SAMPLES)
    eta = _isotropic_eta(_D, _N, noise_std)
    np.testing.assert_allclose(theory.optimal_gd_lr(task), eta, rtol=10 * _EPS32)
    self.assertLess(abs(float(estimate.value) - eta), _Z * float(estimate.stderr))
    self.assertLess(float(estimate.stderr), 0.05 * eta)

  def test_optimal_gd_lr_mc_linear_isotropic_with_rotation(self):
    # A rotated identity is the identity; a rotated isotropic prior leaves eta* unchanged.
    task = _task(cov_x="identity@3", cov_w="diag:2,2,2@5", noise_std=0.5)
    estimate = theory.optimal_gd_lr_mc(task, jax.random.PRNGKey(16), _NUM_SAMPLES)
    exact = float(theory.optimal_gd_lr(task))
    np.testing.assert_allclose(exact, _N / (_N + 1 + (2 * _D + 0.25) / 2), rtol=100 * _EPS32)
    self.assertLess(abs(float(estimate.value) - exact), _Z * float(estimate.stderr))

  def test_optimal_gd_lr_mc_non_isotropic(self):
    # The best eta for Gamma = eta I is E[y_q x_q^T g] / E[g^T Sx g] = tr(Sx^2 Sw) / tr(Sx H)
    # (= optimal_gd_lr); dividing by E[g^T g] is right only when cov_x = I.
    task = self.task
    estimate = theory.optimal_gd_lr_mc(task, jax.random.PRNGKey(17), _NUM_SAMPLES)
    exact = float(theory.optimal_gd_lr(task))
    self.assertLess(abs(float(estimate.value) - exact), _Z * float(estimate.stderr))

  def test_optimal_gd_lr_mc_abs_is_zero(self):
    # phi = abs: E[y x | f] = 0, so the best step is 0 (the optimum predicts 0).
    task = _task(cov_x=None, cov_w=None, noise_std=0.5, response="abs")
    estimate = theory.optimal_gd_lr_mc(task, jax.random.PRNGKey(18), _NUM_SAMPLES)
    self.assertGreater(float(estimate.stderr), 0.0)
    self.assertLess(abs(float(estimate.value)), _Z * float(estimate.stderr))
    # Power: the same estimator resolves a step of a few percent of the linear eta*.
    self.assertLess(_Z * float(estimate.stderr), 0.05 * _isotropic_eta(_D, _N, 0.5))

  def test_relu_optimum_is_a_multiple_of_identity(self):
    task = _task(cov_x=None, cov_w=None, noise_std=0.5, response="relu")
    gamma = theory.optimal_gamma_mc(task, jax.random.PRNGKey(19), _NUM_SAMPLES)
    eta = theory.optimal_gd_lr_mc(task, jax.random.PRNGKey(20), _NUM_SAMPLES)
    value, stderr = _f64(gamma.value), _f64(gamma.stderr)
    off = ~np.eye(_D, dtype=bool)
    self.assertLess(np.abs(value[off] / stderr[off]).max(), _Z_MAX, value / stderr)
    # Independent keys: the diagonal and eta_f differ by at most a few combined stderrs.
    z_diag = (np.diag(value) - float(eta.value)) / np.hypot(np.diag(stderr), float(eta.stderr))
    self.assertLess(np.abs(z_diag).max(), _Z_MAX, z_diag)
    # eta_f is clearly nonzero for relu: the check is not one of zeros against zeros.
    self.assertGreater(float(eta.value), 10 * _Z * float(eta.stderr))


if __name__ == "__main__":
  absltest.main()
