"""The Wishart sampler of the context's statistic (icl_theory/regression/statistics.py).

Every check is statistical: a Monte Carlo moment against its closed form, or
against the explicit token sampler, within a few standard errors.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.regression import experiment as lsa_regression
from icl_theory.regression import statistics
from icl_theory.regression.task import RegressionTask, sample_prompts

# Many entries are tested at once; 5 standard errors keeps a false alarm near 1e-3 per test.
_Z = 5.0


def _z_scores(samples_NxM: np.ndarray, expected_M: np.ndarray) -> np.ndarray:
  """(sample mean - expected) / its standard error, per column."""
  samples_NxM = np.asarray(samples_NxM, np.float64)
  stderr = samples_NxM.std(axis=0, ddof=1) / np.sqrt(samples_NxM.shape[0])
  return (samples_NxM.mean(axis=0) - expected_M) / np.maximum(stderr, 1e-12)


def _two_sample_z(a_NxM: np.ndarray, b_NxM: np.ndarray) -> np.ndarray:
  a_NxM, b_NxM = np.asarray(a_NxM, np.float64), np.asarray(b_NxM, np.float64)
  se = lambda s: s.std(axis=0, ddof=1) ** 2 / s.shape[0]
  return (a_NxM.mean(axis=0) - b_NxM.mean(axis=0)) / np.sqrt(se(a_NxM) + se(b_NxM) + 1e-24)


def _unique_products(s_NxDxD: np.ndarray) -> np.ndarray:
  """The entries s_ij (i <= j) and all their pairwise products: first and second moments at once."""
  rows, cols = np.triu_indices(s_NxDxD.shape[1])
  entries = np.asarray(s_NxDxD, np.float64)[:, rows, cols]
  pairs = np.array(list(itertools.combinations_with_replacement(range(entries.shape[1]), 2)))
  return entries, entries[:, pairs[:, 0]] * entries[:, pairs[:, 1]], pairs, (rows, cols)


@pytest.mark.parametrize("dim, dof, bartlett", [
    (4, 1, False),    # one column: the Gaussian column is cheaper
    (4, 2, True),     # Bartlett's trapezoid (rank-deficient Wishart)
    (4, 4, True),
    (4, 9, True),     # Bartlett's triangle
    (4, 300, True),
    pytest.param(8, 7, True, marks=pytest.mark.slow),  # a larger trapezoid than (4, 2): slow set, 2.2 s cold
])
def test_wishart_factor_has_the_wishart_first_and_second_moments(dim, dof, bartlett):
  pattern = statistics.factor_pattern(dim, dof)
  assert statistics.uses_bartlett(dim, dof) == bartlett == pattern.bartlett
  num = 40_000
  entries = jax.jit(lambda k: statistics.wishart_entries(k, dim, dof, num))(jax.random.PRNGKey(dim * 1000 + dof))
  g = statistics.wishart_factor(entries, pattern, dim)
  assert g.shape == (dim, min(dim, dof) if bartlett else dof, num)
  # Bartlett's factor is lower trapezoidal with a positive diagonal; only the pattern's entries are drawn.
  if bartlett:
    assert np.all(np.triu(np.ones((dim, g.shape[1])), 1)[:, :, None] * np.asarray(g) == 0)
    assert np.all(np.asarray(g)[np.arange(g.shape[1]), np.arange(g.shape[1])] > 0)
  w_NxDxD = np.asarray(jnp.einsum("ikb,jkb->bij", g, g), np.float64)
  entries, products, pairs, (rows, cols) = _unique_products(w_NxDxD)
  eye = np.eye(dim)
  # E[W] = dof I; E[W_ij W_kl] = dof^2 d_ij d_kl + dof (d_ik d_jl + d_il d_jk) for W ~ Wishart(I, dof).
  mean = dof * eye[rows, cols]
  i, j, k, l = rows[pairs[:, 0]], cols[pairs[:, 0]], rows[pairs[:, 1]], cols[pairs[:, 1]]
  second = dof**2 * eye[i, j] * eye[k, l] + dof * (eye[i, k] * eye[j, l] + eye[i, l] * eye[j, k])
  assert np.abs(_z_scores(entries, mean)).max() < _Z
  assert np.abs(_z_scores(products, second)).max() < _Z


# Gaussian columns (n < d) in the fast set; Bartlett's by sums and by rejection in the slow one (1.9-2.5 s
# each cold): theory_test's Bayes risk against token contexts holds the rejection path fast.
@pytest.mark.parametrize("n", [3, pytest.param(5, marks=pytest.mark.slow), pytest.param(12, marks=pytest.mark.slow),
                               pytest.param(40, marks=pytest.mark.slow)])
def test_covariate_factor_has_the_gram_matrix_moments_of_the_tokens(n):
  # F F^T ~ X^T X = sum_i x_i x_i^T: E = n Sx, and the second moments of Wishart_d(Sx, n).
  task = RegressionTask(d=4, n=n, cov_x="geometric:5@1")
  num = 40_000
  f = jax.jit(lambda k: statistics.covariate_factor(k, task, num))(jax.random.PRNGKey(n))
  assert f.shape == (4, min(n, 4), num)
  gram_NxDxD = np.asarray(jnp.einsum("ikb,jkb->bij", f, f), np.float64)
  x = np.asarray(sample_prompts(jax.random.PRNGKey(100 + n), task, num).x, np.float64)
  tokens_NxDxD = np.einsum("bnd,bne->bde", x, x)
  entries, products, _, _ = _unique_products(gram_NxDxD)
  token_entries, token_products, _, _ = _unique_products(tokens_NxDxD)
  assert np.abs(_z_scores(entries, (n * np.asarray(task.cov_x, np.float64))[np.triu_indices(4)])).max() < _Z
  assert np.abs(_two_sample_z(products, token_products)).max() < _Z
  assert np.abs(_two_sample_z(entries, token_entries)).max() < _Z


@pytest.mark.parametrize("dof", [1, 2, 3, 10, 11, 20, 21, 1000])  # sums of exponentials up to 20, then rejection
def test_chi_square_has_the_right_mean_variance_and_skew(dof):
  num = 200_000
  x = np.asarray(jax.jit(lambda k: statistics.chi_square(k, np.array([dof]), num))(jax.random.PRNGKey(dof)),
                 np.float64)[0]
  assert np.all(x > 0)
  # chi^2(k): mean k, variance 2k, third central moment 8k.
  assert abs(_z_scores(x[:, None], np.array([dof]))[0]) < 4
  assert abs(_z_scores(((x - dof) ** 2)[:, None], np.array([2.0 * dof]))[0]) < 4
  assert abs(_z_scores(((x - dof) ** 3)[:, None], np.array([8.0 * dof]))[0]) < 4


@pytest.mark.slow  # 3 s with a cold compile cache
def test_chi_square_rows_are_independent_draws():
  for dof in (5, 30):  # both methods
    x = np.asarray(statistics.chi_square(jax.random.PRNGKey(dof), np.array([dof, dof]), 100_000), np.float64)
    # Cov(row 0, row 1) = 0, with the standard error of a product of independent chi^2(dof).
    assert abs(_z_scores(((x[0] - dof) * (x[1] - dof))[:, None], np.zeros(1))[0]) < 4


# n = 5 and 40 (Bartlett's factor, chi draws by sums and past 20 degrees of freedom) in the slow set, 1.8 s
# each cold: the Wishart and chi tests hold those draws; n = 2 (Gaussian columns) stays fast.
@pytest.mark.parametrize("n", [2, pytest.param(5, marks=pytest.mark.slow), pytest.param(40, marks=pytest.mark.slow)])
def test_statistic_matches_the_token_samplers_in_first_and_second_moments(n):
  """S = F F^T / n from the Wishart sampler against S of explicit prompts, w included."""
  task = RegressionTask(d=3, n=n, cov_x="geometric:5@1", cov_w="geometric:3@2", noise_std=0.5)
  num = 60_000
  stats = jax.jit(lambda k: statistics.sample_statistics(k, task, num))(jax.random.PRNGKey(n))
  s_fast = statistics.statistic_matrix(stats, task)
  prompts = jax.jit(lambda k: sample_prompts(k, task, num))(jax.random.PRNGKey(100 + n))
  z_BxNxD = jnp.concatenate([prompts.x, prompts.y[..., None]], axis=-1)
  s_tokens = jnp.einsum("bti,btj->bij", z_BxNxD, z_BxNxD) / n
  fast_entries, fast_products, _, _ = _unique_products(np.asarray(s_fast))
  token_entries, token_products, _, _ = _unique_products(np.asarray(s_tokens))
  assert np.abs(_two_sample_z(fast_entries, token_entries)).max() < _Z
  assert np.abs(_two_sample_z(fast_products, token_products)).max() < _Z
  # The sampled w is the task's: E[w w^T] = cov_w.
  w_w = np.einsum("ib,jb->bij", stats.w_dxB, stats.w_dxB).reshape(num, -1)
  assert np.abs(_z_scores(w_w, np.asarray(task.cov_w, np.float64).reshape(-1))).max() < _Z


def _mean_loss(objective, params, task, batches: int) -> tuple[float, float]:
  losses = jax.jit(jax.vmap(objective.loss, in_axes=(None, 0, None)))(
      params, jax.random.split(jax.random.PRNGKey(7), batches), task)
  losses = np.asarray(losses, np.float64)
  return losses.mean(), losses.std(ddof=1) / np.sqrt(batches)


def _objectives(task_fields: dict, batch_size: int = 1024):
  config = lsa_config.get_config()
  config.update(batch_size=batch_size, **task_fields)
  task = lsa_regression.validate_config(config)
  made = {}
  for sampler in ("wishart", "tokens"):
    config.sampler = sampler
    made[sampler] = lsa_regression.make_objective(task, config)
  return task, made


def test_integrated_loss_has_the_token_loss_mean_at_any_parameters():
  task, objectives = _objectives(dict(d=3, n=6, cov_x="geometric:4@0", noise_std=0.3, num_layers=2,
                                      init_scale=0.3, vanishing_init_scale=0.3))
  params = objectives["tokens"].init(jax.random.PRNGKey(3))
  fast, fast_se = _mean_loss(objectives["wishart"], params, task, 50)
  slow, slow_se = _mean_loss(objectives["tokens"], params, task, 50)
  assert abs(fast - slow) < 4 * np.hypot(fast_se, slow_se)


def test_integrated_loss_at_gamma_star_is_the_optimal_risk():
  task, objectives = _objectives(dict(d=3, n=8, cov_x="geometric:3@1", cov_w="identity", noise_std=0.5))
  params = objectives["wishart"].init(jax.random.PRNGKey(0))
  # Embed Gamma*: W_PV's last row e_D (p_y = 1), W_KQ's top-left block Gamma*^T, all else 0.
  dim = task.d + 1
  layer = {"W_PV": jnp.zeros((dim, dim)).at[-1, -1].set(1.0),
           "W_KQ": jnp.zeros((dim, dim)).at[:-1, :-1].set(theory.optimal_gamma(task).T)}
  params = jax.tree.map(lambda _, new: new, params, {"layer_0": layer})
  mean, stderr = _mean_loss(objectives["wishart"], params, task, 60)
  assert abs(mean - float(theory.optimal_risk(task))) < 4 * stderr
  # Integrating the query out removes its share of the variance (the law of total variance).
  token_mean, token_stderr = _mean_loss(objectives["tokens"], params, task, 60)
  assert abs(token_mean - float(theory.optimal_risk(task))) < 4 * token_stderr
  assert stderr < token_stderr


def test_sampler_refuses_non_gaussian_responses():
  with pytest.raises(ValueError, match="response='relu'"):
    statistics.sample_statistics(jax.random.PRNGKey(0), RegressionTask(d=2, n=4, response="relu"), 8)
