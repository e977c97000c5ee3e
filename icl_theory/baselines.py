"""Closed-form in-context predictors to hold the trained network against.

Each maps a batch of `Prompts` to predictions for the queries, shape (B,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icl_theory import theory
from icl_theory.tasks.regression import Prompts, RegressionTask


def preconditioned_gd(prompts: Prompts, gamma: jax.Array) -> jax.Array:
  """One preconditioned GD step from w = 0: x_query^T Gamma g, g = (1/n) sum_i y_i x_i."""
  return theory.gamma_predict(gamma, prompts)


def one_step_gd(prompts: Prompts, lr: float | jax.Array) -> jax.Array:
  """One plain GD step from w = 0 with step size lr: x_query^T (lr I) g."""
  g_BxD, xq_BxD = theory.gd_features(prompts)
  return lr * jnp.einsum("bd,bd->b", xq_BxD, g_BxD)


def ridge(prompts: Prompts, task: RegressionTask) -> jax.Array:
  """Posterior mean with the task's prior N(0, cov_w) and noise: Bayes-optimal for linear data."""
  noise_var = task.noise_std**2
  w_BxD = jax.vmap(lambda x, y: theory.bayes_posterior(x, y, task.cov_w, noise_var)[0])(prompts.x, prompts.y)
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)


def ols(prompts: Prompts) -> jax.Array:
  """Ordinary least squares, minimum-norm when n < d (the pseudo-inverse)."""
  w_BxD = jnp.einsum("bdn,bn->bd", jnp.linalg.pinv(prompts.x), prompts.y)
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)
