"""L steps of (preconditioned) GD on the context, at their best step sizes: the yardstick of an L-layer LSA.

Ahn, Cheng, Daneshmand and Sra (2023) show that L trained LSA layers implement L
steps of preconditioned GD on the context's least-squares loss, so an L-layer
LSA is held to L-step GD, not to the one-layer optimum R*. No closed form of the
L-step risk is used: it is a polynomial of degree 2L in the sample covariance,
whose Wishart moments grow unwieldy past L = 1. Everything here is Monte Carlo,
on paired prompts: every step size is scored on the same prompts, and the risk
at the chosen one is re-estimated on fresh prompts (the search's own minimum is
biased low by the selection). At L = 1 it is one-step GD, whose exact risk
`theory.gamma_risk(eta I)` the tests hold it to.

`search` runs inside a compiled program (no host loop), so the evaluation of a
sweep group computes it once per distinct task beside the other baselines;
`best_per_step_lrs` (free step size per step, fit by gradient descent on the
Monte Carlo risk) is for the depth study's mechanism.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_theory.engine import precision
from icl_theory.regression import baselines
from icl_theory.regression.task import RegressionTask, sample_prompts


class MultiStepGD(NamedTuple):
  lr: jax.Array            # the best constant step size
  risk: jax.Array          # its risk on fresh prompts
  risk_stderr: jax.Array


def step_bound(task: RegressionTask, preconditioner_dxd: jax.Array) -> jax.Array:
  """2 / lambda_max(P cov_x): the step past which GD diverges on the population loss."""
  # P cov_x is similar to cov_x^1/2 P cov_x^1/2 (symmetric for symmetric P): its eigenvalues are real.
  chol = jnp.linalg.cholesky(task.cov_x)
  return 2.0 / jnp.max(jnp.linalg.eigvalsh(chol.T @ preconditioner_dxd @ chol))


def search(task: RegressionTask, key: jax.Array, steps: int, num_samples: int,
           preconditioner_dxd: jax.Array | None = None, num_grid: int = 21, rounds: int = 3) -> MultiStepGD:
  """`steps`-step GD at the constant step size of least Monte Carlo risk; traceable (jit, vmap).

  The first grid spans [0, 2 step_bound] (the sample covariance's top eigenvalue
  exceeds the population's at short contexts, so the best step can lie past the
  population bound); each later round zooms into the two cells beside the best
  point. The step size is chosen on `num_samples` prompts from one half of `key`
  and its risk estimated on as many fresh prompts from the other.
  """
  precond = jnp.eye(task.d) if preconditioner_dxd is None else preconditioner_dxd
  k_search, k_risk = jax.random.split(key)
  lo, hi = jnp.zeros(()), 2.0 * step_bound(task, precond)
  lr = hi / 2
  for _ in range(rounds):
    grid = jnp.linspace(lo, hi, num_grid)
    risks = baselines.multi_step_gd_risks(k_search, task, grid, steps, num_samples, precond).value
    best = jnp.argmin(jnp.where(jnp.isfinite(risks), risks, jnp.inf))
    lr = grid[best]
    lo, hi = grid[jnp.maximum(best - 1, 0)], grid[jnp.minimum(best + 1, num_grid - 1)]
  fresh = baselines.multi_step_gd_risks(k_risk, task, lr[None], steps, num_samples, precond)
  return MultiStepGD(lr, fresh.value[0], fresh.stderr[0])


@precision.scoped
def best_per_step_lrs(task: RegressionTask, key: jax.Array, steps: int, num_samples: int,
                      preconditioner_dxd: jax.Array | None = None, iterations: int = 300) -> np.ndarray:
  """One step size per step (steps,), fit by Adam on the Monte Carlo risk of fixed prompts.

  Starts from the best constant step size, so the fit is never worse than it on
  these prompts; ill-posed directions (steps whose order does not matter) are harmless.
  """
  precond = jnp.eye(task.d) if preconditioner_dxd is None else jnp.asarray(preconditioner_dxd, jnp.float32)
  k_search, k_fit = jax.random.split(key)
  start = jax.jit(search, static_argnums=(2, 3))(task, k_search, steps, min(num_samples, 20_000), precond).lr
  prompts = sample_prompts(k_fit, task, num_samples)

  def risk(lrs):
    return jnp.mean((baselines.multi_step_gd(prompts, lrs, steps, precond) - prompts.y_query) ** 2)

  optimizer = optax.adam(0.01 * start)
  lrs = jnp.full((steps,), start)

  @jax.jit
  def fit(lrs):
    def body(carry, _):
      lrs, state = carry
      grads = jax.grad(risk)(lrs)
      updates, state = optimizer.update(grads, state)
      return (optax.apply_updates(lrs, updates), state), None
    (lrs, _), _ = jax.lax.scan(body, (lrs, optimizer.init(lrs)), length=iterations)
    return lrs

  fitted = fit(lrs)
  return np.asarray(fitted if risk(fitted) <= risk(lrs) else lrs)
