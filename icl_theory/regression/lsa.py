"""Linear self-attention (LSA) in the full parameterisation of Mahankali et al.

Tokens z_i = (x_i, y_i) and z_query = (x_query, 0) in R^(d+1); one layer is

    f(Z) = Z + (1/n) W_PV Z M (Z^T W_KQ Z),   M = diag(1, ..., 1, 0),

with Z = [z_1 ... z_n, z_query] (tokens as columns) and M keeping the query out
of the keys and values. Here tokens are rows, h_TxD = Z^T, and the layer is
computed as h + h (W_PV S W_KQ)^T with S = (1/n) h^T M h: the same product
re-associated, O(T D^2) instead of O(T^2 D). The prediction is the last entry of
the query token after the last layer; for one layer it is p^T S Q z_query with
p the last row of W_PV and Q = W_KQ.

With `negate_readout` the prediction is minus that entry, as in Ahn, Cheng,
Daneshmand and Sra (2023): their sparse layers then keep each context y-entry
the residual y_i - w^T x_i of an iterate w of preconditioned GD, and the query's
entry -w^T x_query. Read as +entry, L > 1 sparse layers compute
[prod_l (I + Gamma_l S) - I] S^-1 g instead, which is not GD and trains to a
higher risk (issue 18). The sign is a parameter ('readout', -1) that gets no
gradient, so that saved parameters carry it and `predict` reads it; for one
layer it only flips the sign of p.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


def _init(scale: float, vanishing_scale: float, corner: float | None = None):
  """N(0, scale^2) entries, except the last row's first d (p_x in W_PV, q21 in W_KQ): N(0, vanishing_scale^2).

  `corner`, if given, is the last entry's value (p_y in W_PV) instead of a draw.
  """
  def init(key, shape, dtype=jnp.float32):
    w = jax.random.normal(key, shape, dtype)
    w = w * jnp.full(shape, scale, dtype).at[-1, :-1].set(vanishing_scale)
    return w if corner is None else w.at[-1, -1].set(corner)
  return init


class LinearSelfAttention(nn.Module):
  """One LSA layer with a residual connection; keys/values are the masked tokens.

  `p_y_init`: W_PV's last entry p_y (how much of the value's y reaches a token's
  y) starts at this value instead of a N(0, init_scale^2) draw. Ahn et al. fix
  it at 1 in their sparse layers; a deep sparse LSA started there trains to a
  quarter of the risk it reaches from p_y ~ 0 (issue 18).
  """
  init_scale: float = 0.02
  vanishing_init_scale: float = 0.0
  p_y_init: float | None = None

  @nn.compact
  def __call__(self, h_BxTxD: jax.Array, mask_T: jax.Array, n: int, query_only: bool = False) -> jax.Array:
    """The updated tokens (B, T, D); with `query_only`, the query token's alone (B, D)."""
    dim = h_BxTxD.shape[-1]
    init = _init(self.init_scale, self.vanishing_init_scale)
    w_pv_DxD = self.param("W_PV", _init(self.init_scale, self.vanishing_init_scale, self.p_y_init), (dim, dim))
    w_kq_DxD = self.param("W_KQ", init, (dim, dim))
    s_BxDxD = jnp.einsum("btd,t,bte->bde", h_BxTxD, mask_T, h_BxTxD) / n
    mix_BxDxD = w_pv_DxD @ s_BxDxD @ w_kq_DxD
    if query_only:  # the last layer: only the query is read out, so only it is updated
      query_BxD = h_BxTxD[:, n]
      return query_BxD + jnp.einsum("bed,bd->be", mix_BxDxD, query_BxD)
    return h_BxTxD + jnp.einsum("bed,btd->bte", mix_BxDxD, h_BxTxD)


class LSA(nn.Module):
  """`num_layers` LSA layers on the prompt's tokens; returns the query's prediction (B,)."""
  num_layers: int = 1
  init_scale: float = 0.02
  vanishing_init_scale: float = 0.0
  negate_readout: bool = False
  p_y_init: float | None = None  # every layer's (LinearSelfAttention)

  @nn.compact
  def __call__(self, x_BxNxD: jax.Array, y_BxN: jax.Array, x_query_BxD: jax.Array) -> jax.Array:
    h_BxTxD = prompt_tokens(x_BxNxD, y_BxN, x_query_BxD)
    n = x_BxNxD.shape[1]
    mask_T = jnp.ones(n + 1, h_BxTxD.dtype).at[n].set(0.0)
    layer = functools.partial(LinearSelfAttention, self.init_scale, self.vanishing_init_scale, self.p_y_init)
    for i in range(self.num_layers - 1):
      h_BxTxD = layer(name=f"layer_{i}")(h_BxTxD, mask_T, n)
    last = layer(name=f"layer_{self.num_layers - 1}")
    prediction_B = last(h_BxTxD, mask_T, n, query_only=True)[:, -1]
    if self.negate_readout:
      prediction_B = prediction_B * jax.lax.stop_gradient(self.param("readout", lambda key: -jnp.ones(())))
    return prediction_B


def readout_sign(params: Mapping[str, Any]) -> jax.Array:
  """+1, or the -1 of an LSA built with `negate_readout`."""
  return jax.lax.stop_gradient(params.get("params", params).get("readout", jnp.ones(())))  # a convention: not trained


def prompt_tokens(x_BxNxD: jax.Array, y_BxN: jax.Array, x_query_BxD: jax.Array) -> jax.Array:
  """Tokens (x_i, y_i) for the context and (x_query, 0) for the query: (B, n+1, d+1)."""
  context_BxNxD1 = jnp.concatenate([x_BxNxD, y_BxN[..., None]], axis=-1)
  query_Bx1xD1 = jnp.concatenate([x_query_BxD, jnp.zeros_like(x_query_BxD[:, :1])], axis=-1)[:, None]
  return jnp.concatenate([context_BxNxD1, query_Bx1xD1], axis=1)


def _layer_params(params: Mapping[str, Any], layer: int = 0) -> Mapping[str, Any]:
  params = params.get("params", params)
  if f"layer_{layer}" not in params:
    raise ValueError(f"params have no 'layer_{layer}'; expected LSA parameters "
                     f"(found keys {sorted(params)})")
  return params[f"layer_{layer}"]


def num_layers(params: Mapping[str, Any]) -> int:
  """How many LSA layers `params` hold."""
  return sum(1 for k in params.get("params", params) if k.startswith("layer_"))


def check_params(params: Mapping[str, Any], d: int, what: str = "params") -> None:
  """ValueError naming the mismatch unless `params` are an LSA's for covariate dimension `d`."""
  params = params.get("params", params)
  layers = [k for k in params if k.startswith("layer_")]
  if not layers:
    raise ValueError(f"{what} are not an LSA's parameters: no 'layer_0' (keys: {sorted(params)})")
  for name in layers:
    for weight in ("W_PV", "W_KQ"):
      shape = tuple(jax.numpy.shape(params[name].get(weight)))
      if shape != (d + 1, d + 1):
        raise ValueError(f"{what}[{name!r}][{weight!r}] has shape {shape}, but the task has d={d}: an LSA "
                         f"for it has ({d + 1}, {d + 1}) weights; use the task the parameters were trained on")


def effective_gamma(params: Mapping[str, Any]) -> jax.Array:
  """Gamma_eff = p_y Q11^T of a one-layer LSA: its prediction on the GD-family subspace."""
  if num_layers(params) != 1:
    raise ValueError(f"effective_gamma needs a one-layer LSA; these params have "
                     f"{num_layers(params)} layers (a deeper LSA is not one preconditioner)")
  layer = _layer_params(params)
  p_D = layer["W_PV"][-1]
  q11_dxd = layer["W_KQ"][:-1, :-1]
  return readout_sign(params) * p_D[-1] * q11_dxd.T


def vanishing_parts(params: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Norms of p_x and q21, zero at the global optimum, raw and relative to p_y and Q11."""
  layer = _layer_params(params)
  p_D = layer["W_PV"][-1]
  q_DxD = layer["W_KQ"]
  p_x_norm = jnp.linalg.norm(p_D[:-1])
  q21_norm = jnp.linalg.norm(q_DxD[-1, :-1])
  return {
      "p_x_norm": p_x_norm,
      "q21_norm": q21_norm,
      "p_x_rel": p_x_norm / jnp.abs(p_D[-1]),
      "q21_rel": q21_norm / jnp.linalg.norm(q_DxD[:-1, :-1]),
  }


def query_readout(params: Mapping[str, Any], factor_DxKxB: jax.Array, n: int) -> jax.Array:
  """The map x_query -> prediction, v (d, B), given each context through S = F F^T / n.

  The query token (x_query, 0) never enters S (it is masked from keys and
  values), so after every layer it is still a linear function of x_query and the
  prediction is v^T x_query: the token path's output for the same context. Batch
  axis last (see `icl_theory.regression.statistics`). One layer costs O(D K) per prompt:
  v = A^T S p with A = W_KQ[:, :d], p the last row of W_PV, and S p = F (F^T p) / n.
  Deeper layers carry S and the query's map along, O(D^3) each.
  """
  params = params.get("params", params)
  num = num_layers(params)
  dim = factor_DxKxB.shape[0]
  d = dim - 1
  query_DxdxB = jnp.broadcast_to(jnp.eye(dim, d)[:, :, None], (dim, d, factor_DxKxB.shape[-1]))
  s_DxDxB = jnp.einsum("ikb,jkb->ijb", factor_DxKxB, factor_DxKxB) / n if num > 1 else None
  for i in range(num - 1):
    layer = params[f"layer_{i}"]
    mix_DxDxB = jnp.einsum("ij,jkb,kl->ilb", layer["W_PV"], s_DxDxB, layer["W_KQ"])
    query_DxdxB = query_DxdxB + jnp.einsum("ijb,jkb->ikb", mix_DxDxB, query_DxdxB)
    grow_DxDxB = mix_DxDxB + jnp.eye(dim)[:, :, None]
    s_DxDxB = jnp.einsum("ijb,jkb,lkb->ilb", grow_DxDxB, s_DxDxB, grow_DxDxB)
  last = params[f"layer_{num - 1}"]
  p_D = last["W_PV"][-1]
  sign = readout_sign(params)
  if num == 1:
    sp_DxB = jnp.einsum("ikb,kb->ib", factor_DxKxB, jnp.einsum("ikb,i->kb", factor_DxKxB, sign * p_D)) / n
    return last["W_KQ"][:, :d].T @ sp_DxB
  sp_DxB = jnp.einsum("i,ijb->jb", p_D, s_DxDxB)
  return sign * (query_DxdxB[-1] + jnp.einsum("jb,jk,kdb->db", sp_DxB, last["W_KQ"], query_DxdxB))


def predict(params: Mapping[str, Any], prompts) -> jax.Array:
  """The LSA's predictions (B,) for a batch of prompts (anything with x, y, x_query)."""
  params = params.get("params", params)
  model = LSA(num_layers=num_layers(params), negate_readout="readout" in params)
  return model.apply({"params": params}, prompts.x, prompts.y, prompts.x_query)
