"""Closed-form in-context predictors to hold the trained network against.

Each maps a batch of `Prompts` to predictions for the queries, shape (B,).
`multi_step_gd` runs k steps of (preconditioned) GD on the context's
least-squares loss, the yardstick for a k-layer LSA; `best_multi_step_gd_lr`
finds its best step size on Monte Carlo risk, every candidate scored on the same
prompts so that the comparison between step sizes is paired.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from icl_theory.engine import precision
from icl_theory.regression import theory
from icl_theory.regression.task import Prompts, RegressionTask
from icl_theory.engine.validation import ConfigError, check_int


@precision.scoped
def preconditioned_gd(prompts: Prompts, gamma: jax.Array) -> jax.Array:
  """One preconditioned GD step from w = 0: x_query^T Gamma g, g = (1/n) sum_i y_i x_i."""
  return theory.gamma_predict(gamma, prompts)


@precision.scoped
def one_step_gd(prompts: Prompts, lr: float | jax.Array) -> jax.Array:
  """One plain GD step from w = 0 with step size lr: x_query^T (lr I) g."""
  g_BxD, xq_BxD = theory.gd_features(prompts)
  return lr * jnp.einsum("bd,bd->b", xq_BxD, g_BxD)


@precision.scoped
def ridge(prompts: Prompts, task: RegressionTask) -> jax.Array:
  """Posterior mean with the task's prior N(0, cov_w) and noise: Bayes-optimal for linear data."""
  noise_var = task.noise_std**2
  w_BxD = jax.vmap(lambda x, y: theory.bayes_posterior(x, y, task.cov_w, noise_var)[0])(prompts.x, prompts.y)
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)


@precision.scoped
def ols(prompts: Prompts) -> jax.Array:
  """Ordinary least squares, minimum-norm when n < d (the pseudo-inverse)."""
  w_BxD = jnp.einsum("bdn,bn->bd", jnp.linalg.pinv(prompts.x), prompts.y)
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)


def gd_statistics(prompts: Prompts) -> tuple[jax.Array, jax.Array]:
  """The context's least-squares statistics: Sigma_hat = X^T X / n (B, d, d) and g = X^T y / n (B, d)."""
  n = prompts.x.shape[1]
  sigma_hat_BxDxD = jnp.einsum("bnd,bne->bde", prompts.x, prompts.x) / n
  g_BxD = jnp.einsum("bn,bnd->bd", prompts.y, prompts.x) / n
  return sigma_hat_BxDxD, g_BxD


@precision.scoped
def multi_step_gd(prompts: Prompts, lr: float | jax.Array, steps: int,
                  preconditioner: jax.Array | None = None) -> jax.Array:
  """`steps` steps of GD from w = 0 on (1/2n) sum_i (y_i - w^T x_i)^2; predicts w_k^T x_query.

  Each step is w <- w + lr P (g - Sigma_hat w), P the preconditioner (default I).
  `lr` is one step size, or an array of `steps` sizes, one per step. One step is
  `preconditioned_gd` with Gamma = lr P; with lr P Sigma_hat's eigenvalues in (0, 2)
  the iterates converge to least squares.
  """
  steps = check_int("steps", steps, 1)
  if np.ndim(lr) > 1 or (np.ndim(lr) == 1 and np.shape(lr)[0] != steps):
    raise ConfigError(f"lr of shape {np.shape(lr)} is not allowed with steps={steps}: a number or ({steps},) sizes")
  lr_K = jnp.broadcast_to(jnp.asarray(lr, prompts.x.dtype), (steps,))
  sigma_hat_BxDxD, g_BxD = gd_statistics(prompts)
  if preconditioner is not None:
    # P (g - Sigma_hat w) = P g - (P Sigma_hat) w: fold P in once, not every step.
    g_BxD = g_BxD @ preconditioner.T
    sigma_hat_BxDxD = jnp.einsum("de,bef->bdf", preconditioner, sigma_hat_BxDxD)

  def step(w_BxD, lr):
    return w_BxD + lr * (g_BxD - jnp.einsum("bde,be->bd", sigma_hat_BxDxD, w_BxD)), None

  w_BxD, _ = jax.lax.scan(step, jnp.zeros_like(g_BxD), lr_K)
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)


@precision.scoped
@functools.partial(jax.jit, static_argnames=("steps", "num_samples"))
def multi_step_gd_risks(key: jax.Array, task: RegressionTask, lrs_G: jax.Array, steps: int, num_samples: int,
                        preconditioner: jax.Array) -> theory.Estimate:
  """Monte Carlo risk of `steps`-step GD at each of G step sizes, all on the same prompts: (G,) each."""
  def stats(prompts: Prompts):
    pred_GxB = jax.vmap(lambda lr: multi_step_gd(prompts, lr, steps, preconditioner))(lrs_G)
    err2_GxB = (pred_GxB - prompts.y_query) ** 2
    return err2_GxB.sum(axis=1), (err2_GxB**2).sum(axis=1)

  (s, s2), count = theory.mc_sums(key, task, num_samples, stats)
  return theory.mean_and_stderr(s, s2, count)


class StepSizeSearch(NamedTuple):
  """The best step size found, and the risk there on the search's own prompts."""
  lr: float
  risk: float         # biased low by the selection: re-estimate on fresh prompts for a fair number
  risk_stderr: float


@precision.scoped
def best_multi_step_gd_lr(task: RegressionTask, key: jax.Array, steps: int, num_samples: int,
                          preconditioner: jax.Array | None = None, lr_max: float | None = None,
                          num_grid: int = 41, rounds: int = 3) -> StepSizeSearch:
  """The step size of `steps`-step GD with the least Monte Carlo risk, by a grid refined `rounds` times.

  Every round scores `num_grid` step sizes on the same `num_samples` prompts (one
  key), so step sizes are compared on paired errors and the curve being
  minimised is one fixed function; each round zooms into the two grid cells
  beside the best point. The first grid is [0, lr_max], lr_max = 2 / lambda_max(P cov_x)
  by default (the step past which GD diverges on the population loss); it doubles
  while the best point sits on its upper edge.
  """
  steps = check_int("steps", steps, 1)
  num_grid = check_int("num_grid", num_grid, 3)
  rounds = check_int("rounds", rounds, 1)
  precond_DxD = jnp.eye(task.d) if preconditioner is None else jnp.asarray(preconditioner, jnp.float32)
  if lr_max is None:
    lr_max = 2.0 / float(np.max(np.linalg.eigvals(np.asarray(precond_DxD @ task.cov_x, np.float64)).real))
  if not lr_max > 0:
    raise ConfigError(f"lr_max={lr_max!r} is not allowed: a number > 0")
  lo, hi = 0.0, float(lr_max)

  def score(grid):
    est = multi_step_gd_risks(key, task, jnp.asarray(grid, jnp.float32), steps, num_samples, precond_DxD)
    risks = np.asarray(est.value, np.float64)
    return np.where(np.isfinite(risks), risks, np.inf), np.asarray(est.stderr, np.float64)

  for _ in range(8):  # widen until the minimum lies inside the first grid
    grid = np.linspace(lo, hi, num_grid)
    risks, stderrs = score(grid)
    best = int(np.argmin(risks))
    if best < num_grid - 1:
      break
    logging.info("best_multi_step_gd_lr: minimum at the edge lr=%g; widening to %g", hi, 2 * hi)
    hi *= 2
  else:
    raise ValueError(f"no minimum of the {steps}-step GD risk below lr={hi:g}")
  for _ in range(rounds - 1):
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, num_grid - 1)]
    grid = np.linspace(lo, hi, num_grid)
    risks, stderrs = score(grid)
    best = int(np.argmin(risks))
  return StepSizeSearch(float(grid[best]), float(risks[best]), float(stderrs[best]))
