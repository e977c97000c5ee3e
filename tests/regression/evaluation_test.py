"""compare() and baseline_risks() on parameters whose answer is known."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import evaluation as analysis, theory
from icl_theory.engine import sharding
from icl_theory.regression.task import RegressionTask


def _params_for(gamma, p_x_scale=0.0, q21_scale=0.0, p_y=2.0):
  """An LSA layer with Gamma_eff = gamma: p = (p_x, p_y), Q11 = gamma^T / p_y."""
  d = gamma.shape[0]
  w_pv = jnp.zeros((d + 1, d + 1)).at[-1, -1].set(p_y).at[-1, :-1].set(p_x_scale)
  w_kq = jnp.zeros((d + 1, d + 1)).at[:-1, :-1].set(gamma.T / p_y).at[-1, :-1].set(q21_scale)
  return {"layer_0": {"W_PV": w_pv, "W_KQ": w_kq}}


TASK = RegressionTask(d=3, n=12, cov_x="geometric:5@2", cov_w="identity", noise_std=0.4)


def test_compare_at_the_optimum():
  gamma_star = theory.optimal_gamma(TASK)
  out = analysis.compare(_params_for(gamma_star), TASK, jax.random.PRNGKey(0), num_samples=60_000)
  assert out["gamma_rel_error"] < 1e-5
  assert out["gamma_cosine"] == pytest.approx(1.0, abs=1e-6)
  assert out["learned_risk"] == pytest.approx(out["optimal_risk"], rel=1e-5)
  assert abs(out["excess_risk"]) < 1e-4
  assert out["prediction_gap_mse"] < 1e-8
  assert out["p_x_norm"] == 0.0 and out["q21_norm"] == 0.0
  # The network's own Monte Carlo risk is an estimate of R*: within 4 standard errors.
  assert abs(out["model_risk_mc"] - out["optimal_risk"]) < 4 * out["model_risk_mc_stderr"]


def test_compare_away_from_the_optimum():
  gamma_star = theory.optimal_gamma(TASK)
  gamma = 0.8 * gamma_star
  out = analysis.compare(_params_for(gamma, p_x_scale=0.1), TASK, jax.random.PRNGKey(1), num_samples=60_000)
  assert out["gamma_rel_error"] == pytest.approx(0.2, rel=1e-4)
  assert out["learned_risk"] == pytest.approx(float(theory.gamma_risk(gamma, TASK)), rel=1e-5)
  assert out["excess_risk"] > 0
  assert out["p_x_norm"] == pytest.approx(0.1 * np.sqrt(3), rel=1e-5)
  assert out["prediction_gap_mse"] > 0
  # p_x != 0 adds terms beyond Gamma_eff: the network is worse than R(Gamma_eff).
  assert out["model_risk_mc"] - 4 * out["model_risk_mc_stderr"] > out["optimal_risk"]


def test_baseline_risks_are_ordered_and_exact_where_closed_form():
  out = analysis.baseline_risks(TASK, jax.random.PRNGKey(2), num_samples=40_000)
  eta = float(theory.optimal_gd_lr(TASK))
  assert out["one_step_gd_lr"] == pytest.approx(eta, rel=1e-6)
  assert out["one_step_gd_risk"] == pytest.approx(float(theory.gamma_risk(eta * jnp.eye(3), TASK)), rel=1e-6)
  assert out["preconditioned_gd_risk"] == pytest.approx(float(theory.optimal_risk(TASK)), rel=1e-6)
  # Non-isotropic x: the preconditioner helps; Bayes (ridge) is best of all.
  assert out["preconditioned_gd_risk"] < out["one_step_gd_risk"]
  assert out["ridge_risk"] + 4 * out["ridge_risk_stderr"] < out["preconditioned_gd_risk"]
  assert out["ridge_risk"] < out["ols_risk"]


@pytest.mark.slow
def test_baseline_risks_for_a_nonlinear_response_are_monte_carlo():
  task = RegressionTask(d=3, n=12, response="relu", noise_std=0.1)
  out = analysis.baseline_risks(task, jax.random.PRNGKey(3), num_samples=20_000)
  for name in ("one_step_gd", "preconditioned_gd", "ridge", "ols"):
    assert out[f"{name}_risk_stderr"] > 0
    assert np.isfinite(out[f"{name}_risk"])
  # Gamma* is the best preconditioner, plain GD with eta_f is (isotropic data) the same up to MC error.
  diff = out["one_step_gd_risk"] - out["preconditioned_gd_risk"]
  assert abs(diff) < 4 * np.hypot(out["one_step_gd_risk_stderr"], out["preconditioned_gd_risk_stderr"])


def test_compare_for_a_deep_lsa_leaves_gamma_fields_empty():
  params = {f"layer_{i}": {"W_PV": 0.1 * jnp.eye(4), "W_KQ": 0.1 * jnp.eye(4)} for i in range(2)}
  out = analysis.compare(params, RegressionTask(d=3, n=5), jax.random.PRNGKey(0), num_samples=1000)
  assert out["gamma_rel_error"] is None and out["learned_risk"] is None
  assert np.isfinite(out["model_risk_mc"])


@pytest.mark.slow
def test_evaluate_group_on_programs_compiled_ahead_on_another_thread():
  # Two runs on one task and one on another: the reference program sees the two distinct tasks.
  tasks = [TASK, TASK, RegressionTask(d=3, n=12, cov_x="identity", noise_std=0.4)]
  stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *tasks)
  gamma_star = theory.optimal_gamma(TASK)
  params = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                        *[_params_for(gamma_star * scale) for scale in (1.0, 0.8, 0.5)])
  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 2)])
  shapes = jax.eval_shape(lambda p: p, params)
  with concurrent.futures.ThreadPoolExecutor(1) as thread:
    programs = thread.submit(analysis.compile_evaluation, shapes, stacked, 4096, 4096).result()
  assert len(programs.distinct.cov_x) == 2 and programs.index.tolist() == [0, 0, 1]
  ahead = analysis.evaluate_group(params, stacked, keys, 4096, 4096, programs=programs)
  here = analysis.evaluate_group(params, stacked, keys, 4096, 4096)
  assert ahead == here
  # Each run's row is compare() and baseline_risks() of that run alone (same keys, same numbers).
  for r, (scale, task) in enumerate(zip((1.0, 0.8, 0.5), tasks)):
    alone = analysis.compare(_params_for(gamma_star * scale), task, keys[r], 4096,
                             gamma_star=ahead[r]["optimal_gamma"])
    for key in ("gamma_rel_error", "model_risk_mc", "prediction_gap_mse", "learned_risk"):
      assert ahead[r][key] == pytest.approx(alone[key], rel=1e-5), (r, key)
  assert ahead[0]["ridge_risk"] == ahead[1]["ridge_risk"] != ahead[2]["ridge_risk"]


def test_one_run_at_a_time_is_the_vmap():
  runs = sharding.run_sharding(jax.local_devices()[:1])
  fn = lambda key, scale: theory.prediction_risk_mc(
      key, TASK, 2048, jax.tree_util.Partial(lambda s, p: s * p.x_query[:, 0], scale)).value
  keys, scales = jnp.stack([jax.random.PRNGKey(i) for i in range(3)]), jnp.array([0.0, 0.5, 1.0])
  looped = jax.jit(sharding.per_run(fn, runs, one_at_a_time=True))(keys, scales)
  vmapped = jax.jit(sharding.per_run(fn, runs))(keys, scales)
  np.testing.assert_allclose(looped, vmapped, rtol=1e-6)
  assert len(set(np.asarray(looped).tolist())) == 3


@pytest.mark.slow  # 3 s with a cold compile cache
def test_contexts_that_determine_w_give_ridge_and_ols_risk_zero_without_monte_carlo():
  # Noiseless linear data with n >= d: the shortcut's 0 is what the Monte Carlo estimates converge to.
  task = RegressionTask(d=4, n=4, cov_x="geometric:5@1")
  assert analysis.determined_by_context(task)
  baselines = analysis.baseline_risks(task, num_samples=2048)
  assert baselines["ridge_risk"] == baselines["ols_risk"] == 0.0
  mc = theory.bayes_risk(task, jax.random.PRNGKey(3), 2048)
  assert abs(float(mc.value)) < 1e-3, mc
  ols = theory.prediction_risk_mc(jax.random.PRNGKey(3), task, 2048, jax.tree_util.Partial(analysis._ols_predict))
  assert abs(float(ols.value)) < 1e-3, ols
  # Noise, a short context or a nonlinear response: the context does not determine the prediction.
  for other in (RegressionTask(d=4, n=4, noise_std=0.1), RegressionTask(d=4, n=3),
                RegressionTask(d=4, n=8, response="relu")):
    assert not analysis.determined_by_context(other)
  assert analysis.baseline_risks(RegressionTask(d=4, n=3), num_samples=2048)["ridge_risk"] > 0.1
