"""The benchmark's reference implementation computes the same model on the same data distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import benchmark
from icl_theory.regression import lsa
from icl_theory.regression.task import Prompts


def test_reference_loss_is_the_lsa_on_its_prompts():
  reference = benchmark.Reference(d=3, n=6, batch_size=8)
  tokens, y_query = jax.vmap(reference.sample_prompt)(jax.random.split(jax.random.PRNGKey(0), 8))
  keys = jax.random.split(jax.random.PRNGKey(1))
  params = {"W_PV": 0.3 * jax.random.normal(keys[0], (4, 4)), "W_KQ": 0.3 * jax.random.normal(keys[1], (4, 4))}
  # The query token's label slot is 0, and the label is the query's y = w^T x_q.
  np.testing.assert_array_equal(tokens[:, -1, -1], 0.0)
  prompts = Prompts(x=tokens[:, :-1, :-1], y=tokens[:, :-1, -1], x_query=tokens[:, -1, :-1], y_query=y_query)
  ours = jnp.mean((lsa.predict({"layer_0": params}, prompts) - y_query) ** 2)
  np.testing.assert_allclose(reference.loss(params, tokens, y_query), ours, rtol=1e-5)


def test_reference_prompts_are_noiseless_linear_gaussian():
  reference = benchmark.Reference(d=3, n=6)
  tokens, y_query = jax.vmap(reference.sample_prompt)(jax.random.split(jax.random.PRNGKey(2), 20_000))
  x = np.asarray(tokens[:, :-1, :-1], np.float64)
  # E[x x^T] = I within 5 standard errors per entry (the entries of x_i x_i^T have variance 1 or 2).
  second = np.einsum("bti,btj->ij", x, x) / (x.shape[0] * x.shape[1])
  assert np.abs(second - np.eye(3)).max() < 5 * np.sqrt(2 / (x.shape[0] * x.shape[1]))
  # Each context label is w^T x_i for one w per prompt: the context is exactly solvable.
  w = np.linalg.lstsq(x[0], np.asarray(tokens[0, :-1, -1], np.float64), rcond=None)[0]
  np.testing.assert_allclose(tokens[0, -1, :-1] @ w, y_query[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_reference_and_trainer_run():
  assert benchmark.Reference(d=2, n=3, batch_size=16).prompts_per_second(steps=3, warmup=1) > 0
  config = benchmark._job_config(d=2, n=3, batch_size=16, steps=20)
  assert benchmark.trainer_step_seconds(config) > 0


def test_unknown_figure_is_refused():
  with pytest.raises(ValueError, match="figures='speed' is not allowed"):
    benchmark.run(("speed",))
