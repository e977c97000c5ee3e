"""A small GPT-2-style transformer for in-context classification (the deeper model of Li et al. 2024, Fig. 3a).

The seed paper checks its one-layer theory on a 3-layer, 2-head GPT-2-style
model. This is that model, shaped to be a drop-in replacement for SoftmaxMLP:

    tokens    the same as SoftmaxMLP's: contexts p_i = (x_i, y_i q), query (x_query, 0),
              each mapped to the width by one linear input projection
    block     h <- h + Attention(LN(h));  h <- h + MLP(LN(h)),  MLP = Dense(4 w) -> GELU -> Dense(w)
    read-out  F(P) = w_out . LN(h_query) + b_out: the final LayerNorm, then a linear map to a scalar

No positional information. The prompt is a set: which context comes first says
nothing about the label, and the samplers put the same-pattern contexts at
uniformly random positions. Without positions and with the mask below, F(P) is
invariant under any reordering of the contexts (tested), as the one-layer model's is.

The attention mask replaces GPT-2's causal mask, which without positions would
still make F(P) depend on the order. It keeps what the causal mask does for a
query placed last, and nothing that depends on order:
  - every context attends to every context (not to the query), so the contexts'
    representations do not depend on the query;
  - the query attends to the contexts only, not to itself: its own token reaches
    the read-out through the residual stream, and its attention is then a
    distribution over the l contexts that sums to 1, like SoftmaxMLP's.
The returned attention is the query's, in the last layer, averaged over heads;
every layer's (B, heads, l) query attention is also sown into the
'intermediates' collection as `attention_layer{k}` (apply with
`mutable=["intermediates"]`) for a per-layer analysis.

GELU as in GPT-2; weights N(0, 0.02^2), the residual projections scaled by
1/sqrt(2 num_layers) as in GPT-2, biases 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_theory.engine.validation import check_int, fail

_INIT_STD = 0.02


def check_fields(num_layers: int, num_heads: int, width: int, mlp_ratio: int) -> None:
  """ConfigError naming the field for anything the model cannot be built with."""
  check_int("num_layers", num_layers, 1)
  heads = check_int("num_heads", num_heads, 1)
  if check_int("width", width, 1) % heads:
    raise fail("width", width, f"a positive multiple of num_heads={heads} (each head gets width / num_heads)")
  check_int("mlp_ratio", mlp_ratio, 1)


def attention_mask(num_contexts: int) -> jax.Array:
  """(l + 1, l + 1) bool, True where a row token may attend to a column token; the query is the last token.

  Every token attends to the contexts and none to the query, the query not even to itself.
  """
  return jnp.broadcast_to(jnp.arange(num_contexts + 1) < num_contexts, (num_contexts + 1, num_contexts + 1))


class Block(nn.Module):
  """One pre-LayerNorm block: h + Attention(LN(h)), then + MLP(LN(h)). Returns h and the query's attention."""
  num_heads: int
  mlp_ratio: int
  residual_std: float

  @nn.compact
  def __call__(self, h_BxTxW: jax.Array, mask_TxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    width = h_BxTxW.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda features, std, name: nn.Dense(features, kernel_init=nn.initializers.normal(std), name=name)

    a_BxTxW = nn.LayerNorm(name="ln_attention")(h_BxTxW)
    qkv_BxTx3W = dense(3 * width, _INIT_STD, "qkv")(a_BxTxW)
    split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (split(t) for t in jnp.split(qkv_BxTx3W, 3, axis=-1))
    logits_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK) / head_dim**0.5
    logits_BxHxTxT = jnp.where(mask_TxT, logits_BxHxTxT, jnp.finfo(logits_BxHxTxT.dtype).min)
    weights_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)
    mixed_BxTxW = jnp.einsum("bhts,bshk->bthk", weights_BxHxTxT, v_BxTxHxK).reshape(h_BxTxW.shape)
    h_BxTxW = h_BxTxW + dense(width, self.residual_std, "attention_out")(mixed_BxTxW)

    m_BxTxW = nn.LayerNorm(name="ln_mlp")(h_BxTxW)
    m_BxTxF = nn.gelu(dense(self.mlp_ratio * width, _INIT_STD, "mlp_in")(m_BxTxW))
    h_BxTxW = h_BxTxW + dense(width, self.residual_std, "mlp_out")(m_BxTxF)
    query_attention_BxHxL = weights_BxHxTxT[:, :, -1, :-1]  # the query's row, over the contexts
    return h_BxTxW, query_attention_BxHxL


class Transformer(nn.Module):
  """F(P) and the query's last-layer, head-averaged attention over the contexts; same call as SoftmaxMLP.

  `num_layers` pre-LN blocks of `num_heads` heads at width `width`, MLP hidden
  width `mlp_ratio * width`.
  """
  num_layers: int = 3
  num_heads: int = 2
  width: int = 64
  mlp_ratio: int = 4

  def __post_init__(self):
    check_fields(self.num_layers, self.num_heads, self.width, self.mlp_ratio)  # before anything is traced
    super().__post_init__()

  @nn.compact
  def __call__(self, context_BxLxD: jax.Array, query_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_contexts = context_BxLxD.shape[-2]
    tokens_BxTxD = jnp.concatenate([context_BxLxD, query_BxD[:, None, :]], axis=-2)
    h_BxTxW = nn.Dense(self.width, kernel_init=nn.initializers.normal(_INIT_STD), name="embed")(tokens_BxTxD)
    mask_TxT = attention_mask(num_contexts)
    residual_std = _INIT_STD / (2 * self.num_layers) ** 0.5
    for layer in range(self.num_layers):
      h_BxTxW, attention_BxHxL = Block(self.num_heads, self.mlp_ratio, residual_std, name=f"block{layer}")(
          h_BxTxW, mask_TxT)
      self.sow("intermediates", f"attention_layer{layer}", attention_BxHxL)
    query_BxW = nn.LayerNorm(name="ln_final")(h_BxTxW[:, -1])
    output_B = nn.Dense(1, kernel_init=nn.initializers.normal(_INIT_STD), name="readout")(query_BxW)[:, 0]
    return output_B, attention_BxHxL.mean(axis=1)
