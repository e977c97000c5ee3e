"""A finite pool of tasks: its sampler, its exact one-layer theory against Monte Carlo, its Bayes predictor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.regression import experiment as lsa_regression
from icl_theory.regression import pool, statistics, theory
from icl_theory.regression.experiment import integrated_loss
from icl_theory.regression.task import RegressionTask, sample_prompts

_GAMMA = np.array([[0.6, 0.1, 0.0], [-0.1, 0.4, 0.2], [0.0, 0.1, 0.8]], np.float32)  # any Gamma, not symmetric


def _task(num_tasks=5, noise_std=0.5, seed=0, **fields):
  base = RegressionTask(d=3, n=6, noise_std=noise_std, **fields)
  return RegressionTask(d=3, n=6, noise_std=noise_std, pool=pool.draw_pool(seed, num_tasks, base.cov_w), **fields)


def _layer(gamma):
  d = gamma.shape[0]
  w_pv = jnp.zeros((d + 1, d + 1)).at[-1, -1].set(1.0)
  return {"layer_0": {"W_PV": w_pv, "W_KQ": jnp.zeros((d + 1, d + 1)).at[:d, :d].set(jnp.asarray(gamma).T)}}


@pytest.mark.slow
def test_pool_is_a_function_of_the_seed_and_prompts_use_its_tasks():
  task = _task(num_tasks=4, noise_std=0.0)
  np.testing.assert_array_equal(task.pool, _task(num_tasks=4, noise_std=0.0).pool)
  assert not np.allclose(task.pool, _task(num_tasks=4, noise_std=0.0, seed=1).pool)
  prompts = sample_prompts(jax.random.PRNGKey(0), task, 2000)
  # Noiseless: each prompt's responses are X w_m for one of the pool's w_m.
  fits = jnp.einsum("bnd,md->bmn", prompts.x, task.pool) - prompts.y[:, None, :]
  best = jnp.abs(fits).max(axis=-1).min(axis=-1)
  assert float(best.max()) < 1e-4
  used = np.bincount(np.asarray(jnp.abs(fits).max(axis=-1).argmin(axis=-1)), minlength=4) / 2000
  assert np.all(np.abs(used - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 2000))  # uniformly


def test_exact_pool_risk_matches_monte_carlo():
  # The family x_q^T Gamma g sees the pool only through W^T W / M: its exact risk there, against prompts of the pool.
  task = _task()
  exact = float(theory.gamma_risk(jnp.asarray(_GAMMA), pool.moment_task(task)))
  mc = theory.gamma_risk_mc(jnp.asarray(_GAMMA), task, jax.random.PRNGKey(1), 200_000)
  assert abs(exact - float(mc.value)) < 4 * float(mc.stderr)
  # The prior's risk differs from the pool's by far more than that (the test can tell them apart).
  assert abs(float(theory.gamma_risk(jnp.asarray(_GAMMA), pool.without_pool(task))) - exact) > 20 * float(mc.stderr)


@pytest.mark.slow
def test_wishart_sampler_draws_the_pool():
  # The Wishart statistic with w from the pool: its integrated loss estimates the pool's exact risk.
  task = _task()
  stats = statistics.sample_statistics(jax.random.PRNGKey(2), task, 50_000)
  one_prompt = lambda s: integrated_loss(_layer(_GAMMA), jax.tree.map(lambda x: x[..., None], s), task, fused=False)
  losses = jax.jit(jax.vmap(one_prompt, in_axes=-1))(stats)
  mean, stderr = float(losses.mean()), float(losses.std() / np.sqrt(losses.size))
  assert abs(mean - float(theory.gamma_risk(jnp.asarray(_GAMMA), pool.moment_task(task)))) < 4 * stderr


@pytest.mark.slow
def test_pool_optimal_gamma_is_the_least_squares_optimum_on_the_pool():
  task = _task()
  est = theory.optimal_gamma_mc(task, jax.random.PRNGKey(3), 400_000)
  z = np.abs(np.asarray(est.value) - np.asarray(pool.pool_optimal_gamma(task))) / np.asarray(est.stderr)
  assert z.max() < 4
  prior = np.asarray(theory.optimal_gamma(pool.without_pool(task)))
  assert np.abs(np.asarray(est.value) - prior).max() > 10 * np.asarray(est.stderr).max()
  # Its fresh-task risk is the prior's exact risk of it: above R* (it is not the prior's optimum).
  assert float(pool.pool_optimal_fresh_risk(task)) > float(theory.optimal_risk(pool.without_pool(task)))


def test_discrete_posterior_mean_is_the_softmax_over_the_pool():
  rng = np.random.default_rng(0)
  w_MxD = rng.standard_normal((7, 3)).astype(np.float32)
  x_BxNxD = rng.standard_normal((4, 5, 3)).astype(np.float32)
  y_BxN = np.einsum("bnd,d->bn", x_BxNxD, w_MxD[2]) + 0.5 * rng.standard_normal((4, 5)).astype(np.float32)
  got = pool.discrete_posterior_mean(jnp.asarray(x_BxNxD), jnp.asarray(y_BxN), jnp.asarray(w_MxD), 0.25)
  loglik = -((y_BxN[:, None, :] - np.einsum("bnd,md->bmn", x_BxNxD, w_MxD)) ** 2).sum(-1) / (2 * 0.25)
  weights = np.exp(loglik - loglik.max(1, keepdims=True))
  np.testing.assert_allclose(got, (weights / weights.sum(1, keepdims=True)) @ w_MxD, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bayes_predictors_on_the_pool():
  task = _task()
  key = jax.random.PRNGKey(4)
  on_pool = pool.predictor_risks_mc(key, task, 4096, None, jnp.asarray(task.pool))
  fresh = pool.predictor_risks_mc(key, pool.without_pool(task), 4096, None, jnp.asarray(task.pool))
  # Each posterior mean is Bayes-optimal under its own prior: dMMSE on the pool's tasks, ridge on fresh ones.
  assert float(on_pool["dmmse"].value) + 4 * float(on_pool["dmmse"].stderr) < float(on_pool["ridge"].value)
  assert float(fresh["ridge"].value) + 4 * float(fresh["ridge"].stderr) < float(fresh["dmmse"].value)
  assert float(on_pool["dmmse"].value) > 0.25 - 4 * float(on_pool["dmmse"].stderr)  # never below sigma^2
  one = _task(num_tasks=1)  # one task: the posterior is sure of it, the risk is the noise's
  single = pool.predictor_risks_mc(key, one, 1024, None, jnp.asarray(one.pool))["dmmse"]
  assert abs(float(single.value) - 0.25) < 1e-4


def _config(**fields):
  config = lsa_config.get_config()
  config.update(d=4, n=10, num_tasks=4, noise_std=0.5, steps=2000, log_every=500, checkpoint_every=0,
                eval_samples=20_000, gamma_mc_samples=100_000, pool_bayes_samples=2048)
  config.update(**fields)
  return config


@pytest.mark.parametrize("fields, named", [
    (dict(num_tasks=-1), "num_tasks=-1"), (dict(num_tasks=4, response="relu"), "num_tasks=4"),
    (dict(antithetic=True, sampler="tokens"), "antithetic=True"), (dict(preconditioner="curvature"), "preconditioner="),
])
def test_bad_pool_combinations_are_refused(fields, named):
  with pytest.raises(icl_theory.ConfigError, match=f"^{named}"):
    lsa_regression.validate_config(_config(**fields))


@pytest.mark.slow
def test_trained_layer_learns_the_pool_optimum(tmp_path):
  # num_tasks = 4, d = 4, p_x and q21 held at 0: the layer is in the family, so it must reach Gamma*_pool.
  result = icl_theory.train(_config(freeze_vanishing_parts=True), str(tmp_path), verbose=False)
  summary = result.summary
  gamma_pool = np.asarray(summary["pool_optimal_gamma"])
  task = result.task
  np.testing.assert_allclose(summary["task_pool_second_moment"], task.pool.T @ task.pool / 4, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(summary["task_pool_mean"], task.pool.mean(0), rtol=1e-5, atol=1e-6)
  rel = np.linalg.norm(np.asarray(summary["effective_gamma"]) - gamma_pool) / np.linalg.norm(gamma_pool)
  assert rel < 0.03 and summary["pool_gamma_rel_error"] < 0.03
  assert summary["gamma_rel_error"] > 0.1  # far from the prior's Gamma*: the pool, not the prior, was learned
  # On fresh tasks its risk is the pool theory's, and the network's Monte Carlo risk agrees.
  assert abs(summary["learned_risk"] - summary["pool_optimal_fresh_risk"]) < 0.01 * summary["pool_optimal_fresh_risk"]
  assert abs(summary["learned_risk"] - summary["model_risk_mc"]) < 4 * summary["model_risk_mc_stderr"]
  assert abs(summary["learned_pool_risk"] - summary["model_risk_mc_pool"]) < 4 * summary["model_risk_mc_pool_stderr"]


@pytest.mark.slow
def test_pool_metrics_of_a_given_layer_without_noise():
  # A layer with a known Gamma and p_x = q21 = 0 on a noiseless pool: the exact parts are Gamma's,
  # p_x has no readout, and dMMSE (whose likelihood needs noise) is not reported.
  task = _task(noise_std=0.0)
  out = pool.pool_metrics(_layer(_GAMMA), task, jax.random.PRNGKey(5), 512, 64)
  gamma_pool = np.asarray(pool.pool_optimal_gamma(task))
  assert np.isclose(out["pool_gamma_rel_error"], np.linalg.norm(_GAMMA - gamma_pool) / np.linalg.norm(gamma_pool),
                    rtol=1e-5)
  assert np.isclose(out["learned_pool_risk"], float(theory.gamma_risk(jnp.asarray(_GAMMA), pool.moment_task(task))),
                    rtol=1e-5)
  assert out["p_x_mean_cosine"] == 0.0 and out["num_tasks"] == 5
  assert out["pool_bayes_risk"] is None and out["pool_bayes_risk_pool"] is None
  assert abs(out["learned_pool_risk"] - out["model_risk_mc_pool"]) < 4 * out["model_risk_mc_pool_stderr"]
