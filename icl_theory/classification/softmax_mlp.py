"""One-layer, one-head softmax attention followed by a ReLU MLP (Li, Wang, Lu, Cui, Chen 2024).

    F(P) = sum_i a_i ReLU( W_O[i] . sum_s W_V p_s softmax_s((W_K p_s)^T W_Q p_query) )

The query attends to the l context tokens p_1..p_l only, not to itself: the
paper's attention analysis splits the query's attention between the contexts
that share its pattern and the others, and the two sum to 1 (its Fig. 2B). The
output weights a_i are fixed, +1/m for the first m/2 neurons and -1/m for the
rest, and are not parameters.

W_Q and W_K start near a positive multiple of the identity (docs/theory.md Part B:
from a small random start the model can learn the mirror mechanism, attending
to the *other* pattern and flipping its label, which fails out of domain).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


def _identity_plus_noise(scale: float, noise: float):
  def init(key, shape, dtype=jnp.float32):
    return scale * jnp.eye(*shape, dtype=dtype) + noise * jax.random.normal(key, shape, dtype)
  return init


def output_signs(m: int) -> jax.Array:
  """a_i: +1/m for the first m/2 neurons, -1/m for the rest."""
  return jnp.where(jnp.arange(m) < m // 2, 1.0, -1.0) / m


class SoftmaxMLP(nn.Module):
  """F(P) and the query's attention over the contexts; tokens have dimension D = d_x + d_y.

  `m` (even) MLP neurons; W_Q, W_K are D x D, `qk_init_scale` I + N(0, qk_init_noise^2);
  W_V is D x D and W_O is m x D, both N(0, init_scale^2 / D).
  """
  m: int = 64
  qk_init_scale: float = 0.3
  qk_init_noise: float = 0.01
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, context_BxLxD: jax.Array, query_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    dim = context_BxLxD.shape[-1]
    qk_init = _identity_plus_noise(self.qk_init_scale, self.qk_init_noise)
    dense_init = nn.initializers.normal(self.init_scale / dim**0.5)
    w_q_DxD = self.param("W_Q", qk_init, (dim, dim))
    w_k_DxD = self.param("W_K", qk_init, (dim, dim))
    w_v_DxD = self.param("W_V", dense_init, (dim, dim))
    w_o_MxD = self.param("W_O", dense_init, (self.m, dim))
    # (W_K p_s)^T (W_Q p_query) = p_s^T (W_K^T W_Q p_query): one D x D product per prompt, not one per context.
    reader_BxD = (query_BxD @ w_q_DxD.T) @ w_k_DxD
    attention_BxL = jax.nn.softmax(jnp.einsum("bld,bd->bl", context_BxLxD, reader_BxD), axis=-1)
    mixed_BxD = jnp.einsum("bl,bld->bd", attention_BxL, context_BxLxD) @ w_v_DxD.T
    hidden_BxM = jax.nn.relu(mixed_BxD @ w_o_MxD.T)
    return hidden_BxM @ output_signs(self.m), attention_BxL


def hinge_loss(output_B: jax.Array, y_B: jax.Array) -> jax.Array:
  """mean max(0, 1 - y F(P))."""
  return jnp.mean(jax.nn.relu(1.0 - y_B * output_B))


def num_neurons(params: Mapping[str, Any]) -> int:
  return params.get("params", params)["W_O"].shape[0]


def neuron_weights(params: Mapping[str, Any]) -> jax.Array:
  """The rows of W_O W_V: (m, D), each neuron's direction in token space (the paper's Fig. 2C-D)."""
  params = params.get("params", params)
  return params["W_O"] @ params["W_V"]
