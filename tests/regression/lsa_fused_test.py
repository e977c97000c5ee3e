"""The fused one-layer training loss (icl_theory/regression/lsa_fused.py) against the einsum path.

Both are computed on the same draws, so they must agree to float32 rounding, the
value and the gradient (which lsa_fused writes out by hand).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.configs import lsa as lsa_config
from icl_theory.engine import precision
from icl_theory.regression import experiment as lsa_regression
from icl_theory.regression import lsa_fused
from icl_theory.regression import statistics
from icl_theory.regression.task import RegressionTask

TASKS = {
    "isotropic_bartlett": dict(d=5, n=20),
    "trapezoid_noisy": dict(d=4, n=3, cov_x="geometric:5@1", noise_std=0.3),   # n < d + 1
    "gaussian_columns": dict(d=4, n=1, cov_w="geometric:3@2", noise_std=0.5),  # one column is cheaper
    "long_context": dict(d=3, n=300, cov_x="geometric:5@1", cov_w="inverse", noise_std=0.5),  # rejection chi
}


def _task_and_params(fields: dict, seed: int = 0):
  config = lsa_config.get_config()
  config.update(**fields)
  task = lsa_regression.validate_config(config)
  params = lsa_regression.make_objective(task, config).init(jax.random.PRNGKey(seed))
  # Away from the small initialisation, with p_x and q21 non-zero: every term of the gradient matters.
  noise = lambda k, x: 0.4 * jax.random.normal(k, x.shape)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return task, jax.tree.unflatten(tree, [x + noise(k, x) for k, x in zip(keys, leaves)])


def _value_and_grad(params, stats, task, fused):
  # At full float32 precision, as the trainer runs them (a GPU would otherwise take TF32 for the einsums).
  with precision.context():
    return jax.jit(jax.value_and_grad(lambda p: lsa_regression.integrated_loss(p, stats, task, fused)))(params)


# long_context in the slow set (1.8 s cold): the other tasks hold the same code at shorter contexts.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "long_context" else name
                                  for name in sorted(TASKS)])
def test_fused_loss_and_gradient_equal_the_einsum_path(name):
  task, params = _task_and_params(TASKS[name])
  assert lsa_fused.supports(task, num_layers=1)
  assert statistics.factor_pattern(task.d + 1, task.n).bartlett == (name != "gaussian_columns")
  stats = jax.jit(lambda k: statistics.sample_statistics(k, task, 512))(jax.random.PRNGKey(4))
  fused, fused_grad = _value_and_grad(params, stats, task, fused=True)
  plain, plain_grad = _value_and_grad(params, stats, task, fused=False)
  np.testing.assert_allclose(fused, plain, rtol=2e-5)
  for got, want in zip(jax.tree.leaves(fused_grad), jax.tree.leaves(plain_grad)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
  # The gradient reaches exactly p (W_PV's last row) and A (W_KQ's first d columns).
  layer = fused_grad["layer_0"]
  assert np.all(np.asarray(layer["W_PV"])[:-1] == 0) and np.all(np.asarray(layer["W_KQ"])[:, -1] == 0)
  assert np.all(np.asarray(layer["W_PV"])[-1] != 0)


def test_fused_loss_vmaps_over_runs_like_a_sweep():
  """A sweep group vmaps the loss over runs that differ in cov_x, cov_w and noise only."""
  tasks = [RegressionTask(d=3, n=8, cov_x=cov, cov_w="inverse", noise_std=noise)
           for cov, noise in (("identity", 0.0), ("geometric:4@1", 0.5))]
  _, params = _task_and_params(dict(d=3, n=8))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *tasks)
  keys = jax.random.split(jax.random.PRNGKey(2), 2)

  def loss(task, key):
    return lsa_regression.integrated_loss(params, statistics.sample_statistics(key, task, 256), task)

  together = jax.jit(jax.vmap(loss))(stacked, keys)
  alone = [jax.jit(loss)(task, key) for task, key in zip(tasks, keys)]
  np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_fused_path_is_taken_only_where_it_applies():
  assert not lsa_fused.supports(RegressionTask(d=3, n=8), num_layers=2)
  assert not lsa_fused.supports(RegressionTask(d=lsa_fused.MAX_D + 1, n=8), num_layers=1)
  assert lsa_fused.supports(RegressionTask(d=lsa_fused.MAX_D, n=8), num_layers=1)
