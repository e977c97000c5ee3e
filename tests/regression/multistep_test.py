"""L-step GD at its best step size: Monte Carlo against the exact one-step risk; the search never beats it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import baselines, multistep, theory
from icl_theory.regression.task import RegressionTask


@pytest.mark.parametrize("cov_x, noise_std", [("identity", 0.0), ("geometric:5@1", 0.5)])
def test_one_step_monte_carlo_risk_is_the_exact_one(cov_x, noise_std):
  task = RegressionTask(d=3, n=8, cov_x=cov_x, noise_std=noise_std)
  eta = theory.optimal_gd_lr(task)
  exact = float(theory.gamma_risk(eta * jnp.eye(3), task))
  mc = baselines.multi_step_gd_risks(jax.random.PRNGKey(0), task, eta[None], 1, 40_000, jnp.eye(3))
  assert abs(float(mc.value[0]) - exact) < 4 * float(mc.stderr[0])


def test_the_one_step_search_finds_the_exact_optimum():
  task = RegressionTask(d=3, n=8, noise_std=0.5)
  eta = float(theory.optimal_gd_lr(task))
  exact = float(theory.gamma_risk(eta * jnp.eye(3), task))
  found = jax.jit(multistep.search, static_argnums=(2, 3))(task, jax.random.PRNGKey(1), 1, 40_000)
  # Fresh prompts: the risk at the step found is no better than the optimum, beyond noise, and close to it.
  assert float(found.risk) > exact - 4 * float(found.risk_stderr)
  assert float(found.risk) < exact * 1.02 + 4 * float(found.risk_stderr)
  assert abs(float(found.lr) - eta) < 0.1 * eta


@pytest.mark.slow
def test_more_steps_lower_the_risk_of_noiseless_gd():
  task = RegressionTask(d=3, n=10)
  search = jax.jit(multistep.search, static_argnums=(2, 3))
  risks = [float(search(task, jax.random.PRNGKey(2), k, 10_000).risk) for k in (1, 2, 4)]
  assert risks[0] > risks[1] > risks[2]


@pytest.mark.slow
def test_per_step_sizes_are_no_worse_than_the_best_constant_one_on_fresh_prompts():
  task = RegressionTask(d=3, n=10, cov_x="geometric:5@1")
  constant = jax.jit(multistep.search, static_argnums=(2, 3))(task, jax.random.PRNGKey(3), 3, 20_000)
  lrs = multistep.best_per_step_lrs(task, jax.random.PRNGKey(4), 3, 20_000, iterations=200)
  fresh = baselines.multi_step_gd_risks(jax.random.PRNGKey(5), task, jnp.stack([jnp.full(3, constant.lr),
                                        jnp.asarray(lrs)]), 3, 40_000, jnp.eye(3))
  risks, stderrs = np.asarray(fresh.value), np.asarray(fresh.stderr)
  assert risks[1] < risks[0] + 3 * stderrs[0]
