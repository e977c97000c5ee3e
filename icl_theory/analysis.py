"""Learned against analytic: what a trained LSA computes, beside what the theorem says it must.

`compare(params, task)` is the programmatic entry point; `baseline_risks(task)`
gives the risks of the closed-form predictors on the same task. Exact formulas
are used where the data are Gaussian (response 'linear'); otherwise everything
is Monte Carlo, with standard errors, on shared prompts so differences are paired.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory import baselines, theory
from icl_theory.models import lsa
from icl_theory.tasks.regression import Prompts, RegressionTask

DEFAULT_EVAL_SAMPLES = 100_000
DEFAULT_GAMMA_MC_SAMPLES = 1_000_000


def _mean_stderr(total: jax.Array, total_sq: jax.Array, count: int) -> tuple[float, float]:
  est = theory.mean_and_stderr(total, total_sq, count)
  return float(est.value), float(est.stderr)


@functools.partial(jax.jit, static_argnames="num_samples")
def _model_stats(params, gamma_star, task: RegressionTask, key: jax.Array, num_samples: int):
  """Sums over fresh prompts: the network's squared error, and its squared gap to Gamma*'s predictions."""
  def stats(prompts: Prompts):
    pred = lsa.predict(params, prompts)
    err2 = (pred - prompts.y_query) ** 2
    gap2 = (pred - theory.gamma_predict(gamma_star, prompts)) ** 2
    return err2.sum(), (err2**2).sum(), gap2.sum(), (gap2**2).sum()
  return theory.mc_sums(key, task, num_samples, stats)


def reference_gamma(task: RegressionTask, key: jax.Array | None = None,
                    num_samples: int = DEFAULT_GAMMA_MC_SAMPLES) -> np.ndarray:
  """Gamma*: exact for linear responses, the Monte Carlo least-squares optimum otherwise."""
  if task.is_gaussian:
    return np.asarray(theory.optimal_gamma(task))
  key = jax.random.PRNGKey(1) if key is None else key
  return np.asarray(theory.optimal_gamma_mc(task, key, num_samples).value)


def compare(params: Any, task: RegressionTask, key: jax.Array | None = None,
            num_samples: int = DEFAULT_EVAL_SAMPLES, gamma_star: np.ndarray | None = None) -> dict[str, Any]:
  """Learned vs analytic for a trained LSA on `task`; a dict of floats (and None where undefined).

  Keys: gamma_rel_error (||Gamma_eff - Gamma*||_F / ||Gamma*||_F), gamma_cosine,
  learned_risk (R(Gamma_eff), exact for linear responses), model_risk_mc and
  model_risk_mc_stderr (the network itself on `num_samples` fresh prompts),
  optimal_risk, excess_risk, prediction_gap_mse (E[(network - Gamma* predictor)^2]),
  p_x_norm, q21_norm, p_x_rel, q21_rel. Gamma fields are None for a deeper LSA.
  `gamma_star` defaults to `reference_gamma(task)`.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  k_model, k_gamma, k_risk = jax.random.split(key, 3)
  params = params.get("params", params)
  if gamma_star is None:
    gamma_star = reference_gamma(task, k_gamma)
  gamma_star = jnp.asarray(gamma_star, jnp.float32)
  (e, e2, g, g2), count = _model_stats(params, gamma_star, task, k_model, num_samples)
  model_risk, model_risk_se = _mean_stderr(e, e2, count)
  gap, gap_se = _mean_stderr(g, g2, count)
  out: dict[str, Any] = {"model_risk_mc": model_risk, "model_risk_mc_stderr": model_risk_se,
                         "prediction_gap_mse": gap, "prediction_gap_mse_stderr": gap_se}

  if task.is_gaussian:
    optimal, optimal_se = float(theory.optimal_risk(task)), 0.0
  else:
    optimal, optimal_se = map(float, theory.gamma_risk_mc(gamma_star, task, k_risk, num_samples))
  out.update(optimal_risk=optimal, optimal_risk_stderr=optimal_se)

  if lsa.num_layers(params) == 1:
    gamma = lsa.effective_gamma(params)
    diff = jnp.linalg.norm(gamma - gamma_star) / jnp.linalg.norm(gamma_star)
    cosine = jnp.vdot(gamma, gamma_star) / (jnp.linalg.norm(gamma) * jnp.linalg.norm(gamma_star))
    if task.is_gaussian:
      learned, learned_se = float(theory.gamma_risk(gamma, task)), 0.0
    else:  # same prompts as optimal_risk: the excess is a paired difference
      learned, learned_se = map(float, theory.gamma_risk_mc(gamma, task, k_risk, num_samples))
    out.update(gamma_rel_error=float(diff), gamma_cosine=float(cosine), learned_risk=learned,
               learned_risk_stderr=learned_se, excess_risk=learned - optimal,
               **{k: float(v) for k, v in lsa.vanishing_parts(params).items()})
  else:
    out.update(gamma_rel_error=None, gamma_cosine=None, learned_risk=None, learned_risk_stderr=None,
               excess_risk=model_risk - optimal, p_x_norm=None, q21_norm=None, p_x_rel=None, q21_rel=None)
  return out


def _ridge_predict(task: RegressionTask, prompts: Prompts) -> jax.Array:
  return baselines.ridge(prompts, task)


def _ols_predict(prompts: Prompts) -> jax.Array:
  return baselines.ols(prompts)


def _gd_predict(lr: jax.Array, prompts: Prompts) -> jax.Array:
  return baselines.one_step_gd(prompts, lr)


def baseline_risks(task: RegressionTask, key: jax.Array | None = None, num_samples: int = DEFAULT_EVAL_SAMPLES,
                   gamma_star: np.ndarray | None = None,
                   gamma_mc_samples: int = DEFAULT_GAMMA_MC_SAMPLES) -> dict[str, float]:
  """Risks of one-step GD (best eta), preconditioned GD (Gamma*), ridge/Bayes and OLS, with stderrs.

  Exact where a closed form exists (GD and preconditioned GD on linear data);
  ridge's risk is Monte Carlo over X only (exact given X) for linear data. For
  other responses eta_f and Gamma* are estimated from `gamma_mc_samples` prompts.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  k_eta, k_gamma, k_risk = jax.random.split(key, 3)
  mc = lambda predict: tuple(map(float, theory.prediction_risk_mc(k_risk, task, num_samples, predict)))
  out: dict[str, float] = {}
  if task.is_gaussian:
    eta = float(theory.optimal_gd_lr(task))
    out["one_step_gd_risk"], out["one_step_gd_risk_stderr"] = float(theory.gamma_risk(eta * jnp.eye(task.d), task)), 0.0
    out["preconditioned_gd_risk"], out["preconditioned_gd_risk_stderr"] = float(theory.optimal_risk(task)), 0.0
    out["ridge_risk"], out["ridge_risk_stderr"] = map(float, theory.bayes_risk(task, k_risk, num_samples))
  else:
    eta = float(theory.optimal_gd_lr_mc(task, k_eta, gamma_mc_samples).value)
    gamma_star = reference_gamma(task, k_gamma, gamma_mc_samples) if gamma_star is None else gamma_star
    out["one_step_gd_risk"], out["one_step_gd_risk_stderr"] = mc(jax.tree_util.Partial(_gd_predict, eta))
    out["preconditioned_gd_risk"], out["preconditioned_gd_risk_stderr"] = mc(
        jax.tree_util.Partial(theory.gamma_predict, jnp.asarray(gamma_star, jnp.float32)))
    out["ridge_risk"], out["ridge_risk_stderr"] = mc(jax.tree_util.Partial(_ridge_predict, task))
  out["one_step_gd_lr"] = eta
  out["ols_risk"], out["ols_risk_stderr"] = mc(jax.tree_util.Partial(_ols_predict))
  return out
