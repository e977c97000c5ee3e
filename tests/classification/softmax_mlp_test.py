"""Tests for the softmax attention + ReLU MLP network (icl_theory/classification/softmax_mlp.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.classification.softmax_mlp import SoftmaxMLP, hinge_loss, neuron_weights, output_signs

_B, _L, _D, _M = 5, 7, 6, 8


def _numpy_forward(params: dict, context_BxLxD: np.ndarray, query_BxD: np.ndarray):
  """F(P) = sum_i a_i ReLU(W_O[i] . sum_s W_V p_s softmax_s((W_K p_s)^T W_Q p_query)), written out in float64."""
  w_q, w_k, w_v, w_o = (np.asarray(params[n], np.float64) for n in ("W_Q", "W_K", "W_V", "W_O"))
  m = w_o.shape[0]
  a = np.array([1.0 / m if i < m // 2 else -1.0 / m for i in range(m)])
  outputs, attentions = [], []
  for context_LxD, query_D in zip(np.asarray(context_BxLxD, np.float64), np.asarray(query_BxD, np.float64)):
    scores = np.array([(w_k @ p_s) @ (w_q @ query_D) for p_s in context_LxD])
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    value = sum(w_v @ p_s * weight for p_s, weight in zip(context_LxD, weights))
    outputs.append(sum(a[i] * max(0.0, w_o[i] @ value) for i in range(m)))
    attentions.append(weights)
  return np.array(outputs), np.array(attentions)


def _random_params(seed: int, scale: float = 0.8) -> dict:
  """Parameters far from the initialisation, so that attention and ReLU are both far from trivial."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  shapes = {"W_Q": (_D, _D), "W_K": (_D, _D), "W_V": (_D, _D), "W_O": (_M, _D)}
  return {n: scale * jax.random.normal(k, s) for k, (n, s) in zip(keys, shapes.items())}


def _tokens(seed: int):
  k_c, k_q = jax.random.split(jax.random.PRNGKey(100 + seed))
  return jax.random.normal(k_c, (_B, _L, _D)), jax.random.normal(k_q, (_B, _D))


class ForwardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_model_matches_the_explicit_formula(self):
    model = SoftmaxMLP(m=_M)
    for seed in range(3):
      params = _random_params(seed)
      context, query = _tokens(seed)
      output, attention = self.variant(lambda p, c, q: model.apply({"params": p}, c, q))(params, context, query)
      chex.assert_shape(output, (_B,))
      chex.assert_shape(attention, (_B, _L))
      expected_output, expected_attention = _numpy_forward(params, context, query)
      np.testing.assert_allclose(attention, expected_attention, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(output, expected_output, rtol=1e-4, atol=1e-5)
      assert np.abs(expected_output).max() > 0.05  # a non-trivial check: not all neurons off
      np.testing.assert_allclose(np.asarray(attention).sum(-1), 1.0, atol=1e-6)
      assert (np.asarray(attention) >= 0).all()


def test_output_weights_are_fixed_signs_and_not_parameters():
  np.testing.assert_allclose(output_signs(6), np.array([1, 1, 1, -1, -1, -1]) / 6, rtol=1e-6)
  context, query = _tokens(0)
  params = SoftmaxMLP(m=_M).init(jax.random.PRNGKey(0), context, query)["params"]
  assert set(params) == {"W_Q", "W_K", "W_V", "W_O"}
  chex.assert_shape(params["W_O"], (_M, _D))
  chex.assert_shape(neuron_weights(params), (_M, _D))


def test_query_and_key_start_near_a_multiple_of_the_identity():
  context, query = _tokens(0)
  exact = SoftmaxMLP(m=_M, qk_init_scale=0.3, qk_init_noise=0.0).init(jax.random.PRNGKey(1), context, query)["params"]
  np.testing.assert_allclose(exact["W_Q"], 0.3 * np.eye(_D), rtol=1e-6)
  np.testing.assert_allclose(exact["W_K"], 0.3 * np.eye(_D), rtol=1e-6)
  noisy = SoftmaxMLP(m=_M, qk_init_scale=0.3, qk_init_noise=0.01).init(jax.random.PRNGKey(1), context, query)["params"]
  deviation = np.asarray(noisy["W_Q"]) - 0.3 * np.eye(_D)
  assert 0 < np.abs(deviation).max() < 0.06  # N(0, 0.01^2) entries: all within 6 sigma
  assert not np.allclose(noisy["W_Q"], noisy["W_K"])  # independent draws


def test_the_query_attends_to_the_contexts_only():
  # Not to itself as well: appending a copy of the query token to the contexts changes F.
  model = SoftmaxMLP(m=_M)
  params = _random_params(4)
  context, query = _tokens(4)
  output, _ = model.apply({"params": params}, context, query)
  with_query, attention = model.apply({"params": params}, jnp.concatenate([context, query[:, None]], 1), query)
  assert attention.shape == (_B, _L + 1)
  assert not np.allclose(output, with_query)


def _numpy_loss(params: dict, context, query, y) -> float:
  output, _ = _numpy_forward(params, context, query)
  return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(y, np.float64) * output)))


def test_hinge_loss_gradient_matches_finite_differences():
  model = SoftmaxMLP(m=_M)
  params = _random_params(7)
  context, query = _tokens(7)
  y = jnp.array([1.0, -1.0, 1.0, 1.0, -1.0])
  loss = lambda p: hinge_loss(model.apply({"params": p}, context, query)[0], y)
  grads = jax.grad(loss)(params)
  assert float(loss(params)) > 0  # some prompts inside the margin: the gradient is not trivially zero
  rng = np.random.default_rng(0)
  eps = 1e-5
  for _ in range(6):
    direction = {n: rng.standard_normal(v.shape) for n, v in params.items()}
    plus = {n: np.asarray(v, np.float64) + eps * direction[n] for n, v in params.items()}
    minus = {n: np.asarray(v, np.float64) - eps * direction[n] for n, v in params.items()}
    numeric = (_numpy_loss(plus, context, query, y) - _numpy_loss(minus, context, query, y)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(grads[n], np.float64) * direction[n])) for n in params)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-5)


def test_hinge_loss_is_flat_beyond_the_margin():
  output = jnp.array([2.0, -1.5, 0.3, -0.2])
  y = jnp.array([1.0, -1.0, 1.0, 1.0])
  np.testing.assert_allclose(hinge_loss(output, y), (0 + 0 + 0.7 + 1.2) / 4, rtol=1e-6)
  grad = jax.grad(hinge_loss)(output, y)
  np.testing.assert_allclose(grad, [0.0, 0.0, -0.25, -0.25])
