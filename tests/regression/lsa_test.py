"""The Flax LSA against the paper's matrix form f(Z) and against p^T S Q z_q."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from icl_theory.regression import lsa
from icl_theory.regression.task import RegressionTask, sample_prompts


def _random_params(key, d: int, num_layers: int, scale: float = 0.5):
  keys = jax.random.split(key, 2 * num_layers)
  return {f"layer_{i}": {"W_PV": scale * jax.random.normal(keys[2 * i], (d + 1, d + 1)),
                         "W_KQ": scale * jax.random.normal(keys[2 * i + 1], (d + 1, d + 1))}
          for i in range(num_layers)}


def _matrix_form(params, x, y, x_query):
  """f(Z) = Z + (1/n) W_PV Z M (Z^T W_KQ Z), tokens as columns, in float64 numpy; one prompt."""
  n, d = x.shape
  z = np.zeros((d + 1, n + 1))
  z[:d, :n], z[d, :n], z[:d, n] = x.T, y, x_query
  m = np.diag([1.0] * n + [0.0])
  for i in range(len(params)):
    w_pv = np.asarray(params[f"layer_{i}"]["W_PV"], np.float64)
    w_kq = np.asarray(params[f"layer_{i}"]["W_KQ"], np.float64)
    z = z + w_pv @ z @ m @ (z.T @ w_kq @ z) / n
  return z[d, n]


def _matrix_forms(params, prompts) -> list[float]:
  """`_matrix_form` for every prompt of a batch."""
  arrays = [np.asarray(a, np.float64) for a in (prompts.x, prompts.y, prompts.x_query)]
  return [_matrix_form(params, *(a[b] for a in arrays)) for b in range(len(arrays[0]))]


class LSATest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2, 3)
  def test_equals_matrix_form(self, num_layers):
    d, n, batch = 3, 7, 5
    prompts = sample_prompts(jax.random.PRNGKey(0), RegressionTask(d=d, n=n, noise_std=0.3), batch)
    params = _random_params(jax.random.PRNGKey(1), d, num_layers, scale=0.3)
    pred = self.variant(lsa.predict)(params, prompts)
    chex.assert_shape(pred, (batch,))
    expected = _matrix_forms(params, prompts)
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_layer_is_p_s_q_zq(self):
    d, n = 4, 9
    prompts = sample_prompts(jax.random.PRNGKey(2), RegressionTask(d=d, n=n), 6)
    params = _random_params(jax.random.PRNGKey(3), d, 1)
    p, q = params["layer_0"]["W_PV"][-1], params["layer_0"]["W_KQ"]
    tokens = lsa.prompt_tokens(prompts.x, prompts.y, prompts.x_query)
    s = jnp.einsum("bnd,bne->bde", tokens[:, :n], tokens[:, :n]) / n
    expected = jnp.einsum("d,bde,ef,bf->b", p, s, q, tokens[:, n])
    np.testing.assert_allclose(self.variant(lsa.predict)(params, prompts), expected, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2, 3)
  def test_query_readout_from_statistics_equals_the_token_path(self, num_layers):
    # Any factor F of n S works; the tokens themselves (F = Z^T, batch last) are one.
    d, n, batch = 3, 6, 5
    prompts = sample_prompts(jax.random.PRNGKey(9), RegressionTask(d=d, n=n, noise_std=0.4), batch)
    params = _random_params(jax.random.PRNGKey(10), d, num_layers, scale=0.3)
    factor_DxNxB = jnp.transpose(jnp.concatenate([prompts.x, prompts.y[..., None]], axis=-1), (2, 1, 0))
    v_dxB = self.variant(lsa.query_readout, static_argnums=2)(params, factor_DxNxB, n)
    chex.assert_shape(v_dxB, (d, batch))
    expected = _matrix_forms(params, prompts)
    np.testing.assert_allclose(jnp.einsum("db,bd->b", v_dxB, prompts.x_query), expected, rtol=1e-4, atol=1e-5)

  def test_query_is_masked_out_of_keys_and_values(self):
    # The context tokens must not depend on the query: changing x_query changes the
    # prediction linearly (the query enters only through Q z_query).
    d, n = 3, 5
    prompts = sample_prompts(jax.random.PRNGKey(4), RegressionTask(d=d, n=n), 2)
    params = _random_params(jax.random.PRNGKey(5), d, 2, scale=0.3)
    f = lambda xq: lsa.predict(params, prompts._replace(x_query=xq))
    xq = prompts.x_query
    np.testing.assert_allclose(f(2.0 * xq), 2.0 * f(xq), rtol=1e-4, atol=1e-5)

  def test_effective_gamma_on_the_gd_subspace(self):
    # With p_x = 0 and q21 = 0 the layer predicts x_query^T Gamma_eff g exactly.
    d, n = 3, 8
    params = _random_params(jax.random.PRNGKey(6), d, 1)
    layer = params["layer_0"]
    layer["W_PV"] = layer["W_PV"].at[-1, :-1].set(0.0)
    layer["W_KQ"] = layer["W_KQ"].at[-1, :-1].set(0.0)
    prompts = sample_prompts(jax.random.PRNGKey(7), RegressionTask(d=d, n=n), 4)
    gamma = lsa.effective_gamma(params)
    g = jnp.einsum("bn,bnd->bd", prompts.y, prompts.x) / n
    expected = jnp.einsum("bd,de,be->b", prompts.x_query, gamma, g)
    np.testing.assert_allclose(lsa.predict(params, prompts), expected, rtol=1e-5, atol=1e-5)
    parts = lsa.vanishing_parts(params)
    self.assertEqual(float(parts["p_x_norm"]), 0.0)
    self.assertEqual(float(parts["q21_norm"]), 0.0)

  def test_vanishing_parts_are_the_right_blocks(self):
    params = _random_params(jax.random.PRNGKey(8), 2, 1)
    p, q = params["layer_0"]["W_PV"][-1], params["layer_0"]["W_KQ"]
    parts = lsa.vanishing_parts(params)
    np.testing.assert_allclose(parts["p_x_norm"], np.linalg.norm(p[:2]), rtol=1e-6)
    np.testing.assert_allclose(parts["q21_norm"], np.linalg.norm(q[2, :2]), rtol=1e-6)
    np.testing.assert_allclose(parts["p_x_rel"], np.linalg.norm(p[:2]) / abs(p[2]), rtol=1e-6)

  def test_init_shapes_and_scale(self):
    prompts = sample_prompts(jax.random.PRNGKey(0), RegressionTask(d=4, n=3), 1)
    variables = lsa.LSA(num_layers=2, init_scale=0.01).init(jax.random.PRNGKey(1), prompts.x, prompts.y, prompts.x_query)
    params = variables["params"]
    self.assertEqual(lsa.num_layers(params), 2)
    chex.assert_shape([params["layer_1"]["W_PV"], params["layer_1"]["W_KQ"]], (5, 5))
    self.assertLess(float(jnp.abs(params["layer_0"]["W_KQ"]).max()), 0.1)

  def test_effective_gamma_refuses_deep_lsa(self):
    with pytest.raises(ValueError, match="one-layer"):
      lsa.effective_gamma(_random_params(jax.random.PRNGKey(0), 2, 2))
