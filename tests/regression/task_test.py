"""Tests for RegressionTask and its prompt sampler (icl_theory/regression/task.py)."""

from __future__ import annotations

import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import task as regression
from icl_theory.regression.task import RESPONSES, RegressionTask, sample_prompts
from icl_theory.engine.validation import ConfigError

_Z = 4.0  # every Monte Carlo check holds within this many standard errors
# The statistics run the sampler eagerly: op-by-op dispatch is cached across tasks, while a
# jit would compile once per static (d, n, response, batch); the jitted path is tested below.
_sample = sample_prompts
_D, _N = 3, 6  # one shape for all the tests, so that compiled ops are reused
_BATCH = 16384  # prompts per statistical check


def _mean_and_stderr(samples_BxK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean over axis 0 of iid rows and its standard error, in float64."""
  samples_BxK = np.asarray(samples_BxK, np.float64)
  return samples_BxK.mean(0), samples_BxK.std(0, ddof=1) / math.sqrt(samples_BxK.shape[0])


def _all_x(prompts: regression.Prompts) -> np.ndarray:
  """Context and query inputs together: (B * (n + 1), d), all iid N(0, cov_x)."""
  x_BxTxD = np.concatenate([np.asarray(prompts.x), np.asarray(prompts.x_query)[:, None]], axis=1)
  return x_BxTxD.reshape(-1, x_BxTxD.shape[-1])


def _all_y(prompts: regression.Prompts) -> np.ndarray:
  """Context and query responses together: (B, n + 1); rows share f, so only rows are iid."""
  return np.concatenate([np.asarray(prompts.y), np.asarray(prompts.y_query)[:, None]], axis=1)


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      ("d", 0), ("d", -2), ("d", 2.0), ("d", True), ("d", "3"), ("d", None),
      ("n", 0), ("n", -1), ("n", 1.5), ("n", True), ("n", False),
      ("noise_std", -0.1), ("noise_std", math.nan), ("noise_std", math.inf), ("noise_std", -math.inf),
      ("noise_std", True), ("noise_std", None), ("noise_std", "loud"),
      ("response", "quadratic"), ("response", "Linear"), ("response", None),
      ("mlp_width", 0), ("mlp_width", True),
  )
  def test_bad_field_names_field_and_value(self, field: str, value):
    kwargs = dict(d=3, n=5)
    kwargs[field] = value
    with self.assertRaises(ConfigError) as ctx:
      RegressionTask(**kwargs)
    self.assertIsInstance(ctx.exception, ValueError)
    self.assertTrue(str(ctx.exception).startswith(f"{field}={value!r} "), str(ctx.exception))

  def test_valid_fields_are_normalised(self):
    task = RegressionTask(d=np.int64(3), n=np.int32(5), noise_std=1, response="relu")
    self.assertIs(type(task.d), int)
    self.assertIs(type(task.n), int)
    self.assertEqual((task.d, task.n), (3, 5))
    self.assertEqual(task.noise_std.dtype, np.float32)
    self.assertEqual(float(task.noise_std), 1.0)
    self.assertEqual(task.cov_x.dtype, np.float32)
    np.testing.assert_array_equal(task.cov_w, np.eye(3, dtype=np.float32))
    self.assertFalse(task.is_gaussian)
    self.assertTrue(RegressionTask(d=3, n=5).is_gaussian)

  def test_noise_zero_is_allowed(self):
    self.assertEqual(float(RegressionTask(d=2, n=1, noise_std=0.0).noise_std), 0.0)


class PytreeTest(chex.TestCase):

  def _task(self, **kwargs) -> RegressionTask:
    return RegressionTask(**{**dict(d=_D, n=_N, cov_x="geometric:5@1", cov_w="diag:0.5,1,2",
                                    noise_std=0.3), **kwargs})

  def test_flatten_unflatten_round_trip(self):
    task = self._task(response="tanh", mlp_width=7)
    leaves, treedef = jax.tree.flatten(task)
    self.assertLen(leaves, 3)
    np.testing.assert_array_equal(leaves[0], task.cov_x)
    np.testing.assert_array_equal(leaves[1], task.cov_w)
    self.assertEqual(float(leaves[2]), float(task.noise_std))
    rebuilt = jax.tree.unflatten(treedef, leaves)
    self.assertIsInstance(rebuilt, RegressionTask)
    self.assertEqual((rebuilt.d, rebuilt.n, rebuilt.response, rebuilt.mlp_width), (3, 6, "tanh", 7))
    chex.assert_trees_all_equal(rebuilt, task)
    # The static fields are in the tree structure: tasks that differ there do not share it.
    self.assertNotEqual(jax.tree.structure(self._task(n=7)), jax.tree.structure(self._task()))
    self.assertEqual(jax.tree.structure(self._task(noise_std=1.0)), jax.tree.structure(self._task()))

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_prompts_shapes(self):
    task = self._task()
    batch = 8
    sample = self.variant(sample_prompts, static_argnums=2)
    prompts = sample(jax.random.PRNGKey(0), task, batch)
    chex.assert_shape(prompts.x, (batch, task.n, task.d))
    chex.assert_shape(prompts.y, (batch, task.n))
    chex.assert_shape(prompts.x_query, (batch, task.d))
    chex.assert_shape(prompts.y_query, (batch,))
    chex.assert_tree_all_finite(prompts)
    chex.assert_type(prompts, jnp.float32)
    # The jitted and eager samplers draw the same prompts from the same key.
    chex.assert_trees_all_close(prompts, sample_prompts(jax.random.PRNGKey(0), task, batch),
                                rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_task_as_traced_argument(self):
    # Inside jit the task's leaves are tracers; noise_std must still act.
    task = self._task(noise_std=0.0)
    noisy = self._task(noise_std=1.0)
    sample = self.variant(sample_prompts, static_argnums=2)
    key = jax.random.PRNGKey(1)
    quiet_prompts, noisy_prompts = sample(key, task, 8), sample(key, noisy, 8)
    chex.assert_trees_all_close(quiet_prompts.x, noisy_prompts.x)
    self.assertGreater(float(jnp.abs(quiet_prompts.y - noisy_prompts.y).max()), 0.1)

  def test_vmap_over_stacked_tasks(self):
    first = self._task()
    second = self._task(cov_x="diag:1,2,3", cov_w="inverse", noise_std=1.5)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)
    key = jax.random.PRNGKey(2)
    batch = 8
    both = jax.jit(jax.vmap(lambda t: sample_prompts(key, t, batch)))(stacked)
    chex.assert_shape(both.x, (2, batch, _N, _D))
    chex.assert_shape(both.y_query, (2, batch))
    for i, task in enumerate((first, second)):
      chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], both), sample_prompts(key, task, batch),
                                  rtol=1e-5, atol=1e-5)

  def test_keys_give_fresh_prompts(self):
    task = self._task()
    a = _sample(jax.random.PRNGKey(0), task, 8)
    b = _sample(jax.random.PRNGKey(1), task, 8)
    self.assertGreater(float(jnp.abs(a.x - b.x).max()), 0.1)


class StatisticsTest(parameterized.TestCase):

  def test_x_covariance(self):
    task = RegressionTask(d=_D, n=_N, cov_x="geometric:10@4")
    x_MxD = _all_x(_sample(jax.random.PRNGKey(3), task, _BATCH)).astype(np.float64)
    d = task.d
    products_MxDD = (x_MxD[:, :, None] * x_MxD[:, None, :]).reshape(len(x_MxD), d * d)
    mean, stderr = _mean_and_stderr(products_MxDD)
    z = (mean - np.asarray(task.cov_x, np.float64).ravel()) / stderr
    # d(d+1)/2 = 6 distinct entries: allow a little for multiplicity.
    self.assertLess(np.abs(z).max(), 4.5, z.reshape(d, d))
    mean_x, stderr_x = _mean_and_stderr(x_MxD)
    self.assertLess(np.abs(mean_x / stderr_x).max(), 4.5)

  @parameterized.parameters(
      ("linear", 1.0), ("abs", 1.0), ("mlp", 1.0), ("relu", 0.5),
  )
  def test_y_second_moment(self, response: str, factor: float):
    # E[phi(z)^2] for z ~ N(0, s^2): s^2 for linear and abs, s^2/2 for relu; the mlp is scaled to s^2.
    noise_std = 0.7
    task = RegressionTask(d=_D, n=_N, cov_x="geometric:10@4", cov_w="diag:0.5,1,2",
                          noise_std=noise_std, response=response, mlp_width=8)
    y_BxT = _all_y(_sample(jax.random.PRNGKey(4), task, _BATCH))
    expected = factor * np.trace(np.asarray(task.cov_x, np.float64) @ task.cov_w) + noise_std**2
    # One f per prompt: average within a prompt, then rows are iid.
    mean, stderr = _mean_and_stderr(np.mean(np.asarray(y_BxT, np.float64) ** 2, axis=1))
    self.assertLess(abs(mean - expected), _Z * stderr, (mean, expected, stderr))

  def test_linear_prompts_share_one_w(self):
    # Noiseless linear prompts are consistent: one w explains all n + 1 pairs of each prompt.
    task = RegressionTask(d=_D, n=_N, cov_x="geometric:10@4", cov_w="diag:0.5,1,2")
    prompts = _sample(jax.random.PRNGKey(5), task, 8)
    x_BxTxD = np.concatenate([prompts.x, prompts.x_query[:, None]], axis=1).astype(np.float64)
    y_BxT = _all_y(prompts).astype(np.float64)
    w_BxD = np.stack([np.linalg.lstsq(x[:task.d], y[:task.d], rcond=None)[0]
                      for x, y in zip(x_BxTxD, y_BxT)])
    residual = np.einsum("btd,bd->bt", x_BxTxD, w_BxD) - y_BxT
    scale = np.abs(y_BxT).max() * np.linalg.cond(x_BxTxD[:, :task.d]).max()
    self.assertLess(np.abs(residual).max(), 100 * np.finfo(np.float32).eps * scale)

  @pytest.mark.slow  # 2.5 s cold
  def test_abs_response_is_uncorrelated_with_x(self):
    task = RegressionTask(d=_D, n=_N, cov_x="geometric:10@4", noise_std=0.3, response="abs")
    prompts = _sample(jax.random.PRNGKey(6), task, _BATCH)
    x = np.asarray(prompts.x, np.float64)
    y = np.asarray(prompts.y, np.float64)
    # E[y x] = 0 averaged over the context of each prompt, then over prompts.
    mean, stderr = _mean_and_stderr(np.einsum("bn,bnd->bd", y, x) / task.n)
    self.assertLess(np.abs(mean / stderr).max(), 4.5, mean / stderr)
    # Stronger: E[y x | f] = 0 for each f, so the query's y x is uncorrelated with the context's
    # g = mean y_i x_i. For relu (and linear) it is E|E[y x | f]|^2 > 0: the check has power.
    self.assertLess(abs(self._cross_moment_z(task, 7)), _Z)
    relu_task = RegressionTask(d=_D, n=_N, cov_x="geometric:10@4", noise_std=0.3, response="relu")
    self.assertGreater(self._cross_moment_z(relu_task, 7), 2 * _Z)

  def _cross_moment_z(self, task: RegressionTask, seed: int) -> float:
    prompts = _sample(jax.random.PRNGKey(seed), task, _BATCH)
    x, y = np.asarray(prompts.x, np.float64), np.asarray(prompts.y, np.float64)
    g_BxD = np.einsum("bn,bnd->bd", y, x) / task.n
    a_B = np.asarray(prompts.y_query, np.float64) * np.einsum(
        "bd,bd->b", np.asarray(prompts.x_query, np.float64), g_BxD)
    mean, stderr = _mean_and_stderr(a_B)
    return float(mean / stderr)

  @parameterized.parameters(*RESPONSES)
  def test_every_response_runs(self, response: str):
    task = RegressionTask(d=_D, n=_N, cov_x="geometric:3@1", noise_std=0.1, response=response,
                          mlp_width=6)
    prompts = _sample(jax.random.PRNGKey(8), task, 64)
    chex.assert_shape(prompts.y, (64, _N))
    chex.assert_tree_all_finite(prompts)
    self.assertGreater(float(jnp.std(prompts.y)), 0.1)


if __name__ == "__main__":
  absltest.main()
