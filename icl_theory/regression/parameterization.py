"""Which entries of each LSA layer train: the full parameterisation, the sparse one, and one in between.

Each layer is z <- z + W_PV S W_KQ z (`icl_theory.regression.lsa`), with tokens
z = (x, y) in R^(d+1). In blocks, rows and columns split as (x: d, y: 1):

    full     every entry of W_PV and W_KQ trains (Mahankali et al.; one layer's theorem).
    sparse   W_KQ = [[Q, 0], [0, 0]] and W_PV = [[B, 0], [0, p]]: the attention scores
             are x_i^T Q x_j, and a token's x and y are updated from the x's and the y's
             alone (Ahn, Cheng, Daneshmand, Sra 2023, with their fixed p = 1 made trainable).
             One layer with B = 0 is x_q^T p Q^T g, the same GD family as the full layer.
    sparse_gd  sparse with B = 0: only Q and p train, so the layers are exactly L steps of
             GD preconditioned by Gamma_l = -p_l Q_l^T (`depth`), the setting of Ahn et
             al.'s theorem that trained layers precondition with multiples of Sigma^-1.
    y_to_x   sparse plus the 2d + 1 entries per layer through which a token's y enters the
             attention scores and the x-values (W_KQ[:d, d], W_KQ[d, d], W_PV[:d, d]):
             the entries issue 18 found enough to make deep full LSAs diverge.

A masked entry is 0 from its initialisation on and is multiplied by 0 in the loss,
so no gradient reaches it and it stays exactly 0 under any optimizer; evaluation
reads the parameters as they are, masked entries included.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("full", "sparse", "y_to_x", "sparse_gd")


def masks(name: str, d: int) -> dict[str, np.ndarray]:
  """The 0/1 masks of one layer's W_PV and W_KQ ((d+1, d+1) each) for parameterisation `name`."""
  dim = d + 1
  if name == "full":
    return {"W_PV": np.ones((dim, dim), np.float32), "W_KQ": np.ones((dim, dim), np.float32)}
  if name not in PARAMETERIZATIONS:
    raise ValueError(f"parameterization={name!r} is not allowed: one of {', '.join(PARAMETERIZATIONS)}")
  w_pv = np.zeros((dim, dim), np.float32)
  w_kq = np.zeros((dim, dim), np.float32)
  w_pv[:d, :d] = 0.0 if name == "sparse_gd" else 1.0  # B: the x-values from the x's
  w_pv[d, d] = 1.0    # p: the y-values from the y's
  w_kq[:d, :d] = 1.0  # Q: scores from the x's
  if name == "y_to_x":
    w_kq[:, d] = 1.0    # the key's y in the scores (W_KQ[:d, d] and W_KQ[d, d])
    w_pv[:d, d] = 1.0   # a token's y into its x-value
  return {"W_PV": w_pv, "W_KQ": w_kq}


def apply(params: Any, name: str) -> Any:
  """Every layer's weights times the masks of `name` (the identity for 'full')."""
  if name == "full":
    return params
  def layer(weights: dict[str, Any]) -> dict[str, Any]:
    d = weights["W_PV"].shape[-1] - 1
    mask = masks(name, d)
    return {k: w * jnp.asarray(mask[k], w.dtype) if k in mask else w for k, w in weights.items()}
  return {key: layer(value) if key.startswith("layer_") else value for key, value in params.items()}


def num_trainable(name: str, d: int) -> int:
  """Trainable entries per layer."""
  return int(sum(m.sum() for m in masks(name, d).values()))
