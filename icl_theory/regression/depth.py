"""What each layer of a trained sparse L-layer LSA computes, beside Ahn et al.'s theory.

In the sparse parameterisation with Ahn et al.'s readout (`parameterization`,
`lsa`), layer l updates a token z = (x, y) by

    x <- x + B_l Sigma_hat_l Q_l x,    y <- y + p_l g_l^T Q_l x,

with Sigma_hat_l = (1/n) sum_j x_j x_j^T and g_l = (1/n) sum_j y_j x_j of the
layer's input tokens. With B_l = 0 the x's never change, each context y stays
the residual y_i - w_l^T x_i and the query's y-entry -w_l^T x_query, where

    w_{l+1} = w_l + Gamma_l (g - Sigma_hat w_l),   Gamma_l = -p_l Q_l^T:

L steps of GD preconditioned by Gamma_l, read out as w_L^T x_query. Ahn et al.
(Theorems 3 and 4) find, for x ~ N(0, Sigma), trained layers with Gamma_l a
multiple of Sigma^-1 (and, where B_l trains, B_l a multiple of the identity).
`layer_preconditioners` measures how far each layer is from that;
`prediction_gaps` compares the network's predictions with L steps of GD
preconditioned by Sigma^-1 at the best per-step scalars, and with GD that uses
the network's own Gamma_l (which is the network exactly when every B_l = 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.regression import baselines, lsa
from icl_theory.regression.task import Prompts


def _best_multiple(matrix: np.ndarray, basis: np.ndarray) -> tuple[float, float]:
  """(c, ||M - c basis|| / ||M||) for the c that minimises the Frobenius residual."""
  c = float(np.vdot(matrix, basis) / np.vdot(basis, basis))
  norm = float(np.linalg.norm(matrix))
  return c, float(np.linalg.norm(matrix - c * basis) / norm) if norm > 0 else float("nan")


def preconditioners(params: Any) -> list[np.ndarray]:
  """Gamma_l = sign p_l Q_l^T of each layer (d, d): the preconditioner of its GD step.

  sign is the readout's (`lsa.readout_sign`): for Ahn et al.'s negated readout
  Gamma_l = -p_l Q_l^T as in the module docstring; for one layer it is
  `lsa.effective_gamma`. (Read out as +, L > 1 layers are not GD: see `lsa`.)
  """
  params = params.get("params", params)
  sign = float(lsa.readout_sign(params))
  out = []
  for l in range(lsa.num_layers(params)):
    layer = params[f"layer_{l}"]
    p_y = float(layer["W_PV"][-1, -1])
    q_dxd = np.asarray(layer["W_KQ"][:-1, :-1], np.float64)
    out.append(sign * p_y * q_dxd.T)
  return out


def layer_preconditioners(params: Any, cov_x: np.ndarray) -> list[dict[str, Any]]:
  """Per layer: Gamma_l against its best multiple of cov_x^-1, and B_l against its best multiple of I."""
  params = params.get("params", params)
  d = cov_x.shape[0]
  inverse = np.linalg.inv(np.asarray(cov_x, np.float64))
  rows = []
  for l, gamma in enumerate(preconditioners(params)):
    b = np.asarray(params[f"layer_{l}"]["W_PV"][:-1, :-1], np.float64)
    scale, residual = _best_multiple(gamma, inverse)
    b_scale, b_residual = _best_multiple(b, np.eye(d))
    rows.append({"layer": l + 1, "gamma_over_inverse_cov": scale, "gamma_residual_from_inverse_cov": residual,
                 "gamma_residual_from_identity": _best_multiple(gamma, np.eye(d))[1],
                 "b_norm": float(np.linalg.norm(b)), "b_over_identity": b_scale,
                 "b_residual_from_identity": b_residual})
  return rows


def gd_with_preconditioners(prompts: Prompts, gammas: Sequence[np.ndarray]) -> jax.Array:
  """w_{l+1} = w_l + Gamma_l (g - Sigma_hat w_l) from w_0 = 0, one matrix per step; predicts w_L^T x_query."""
  sigma_hat_BxDxD, g_BxD = baselines.gd_statistics(prompts)
  w_BxD = jnp.zeros_like(g_BxD)
  for gamma in gammas:
    w_BxD = w_BxD + (g_BxD - jnp.einsum("bde,be->bd", sigma_hat_BxDxD, w_BxD)) @ jnp.asarray(gamma, jnp.float32).T
  return jnp.einsum("bd,bd->b", prompts.x_query, w_BxD)


def prediction_gaps(params: Any, prompts: Prompts, cov_x: np.ndarray, per_step_lrs: np.ndarray) -> dict[str, float]:
  """The network beside GD: risks on `prompts`, and gaps E[(f - f_GD)^2] / E[f_GD^2].

  `per_step_lrs` (L,): the best per-step scalars of GD preconditioned by cov_x^-1
  (`multistep.best_per_step_lrs`).
  """
  num = lsa.num_layers(params)
  pred = np.asarray(lsa.predict(params, prompts), np.float64)
  inverse = jnp.asarray(np.linalg.inv(np.asarray(cov_x, np.float64)), jnp.float32)
  gd = np.asarray(baselines.multi_step_gd(prompts, jnp.asarray(per_step_lrs, jnp.float32), num, inverse), np.float64)
  own = np.asarray(gd_with_preconditioners(prompts, preconditioners(params)), np.float64)
  y = np.asarray(prompts.y_query, np.float64)
  gap = lambda a, b: float(np.mean((a - b) ** 2) / np.mean(b**2))
  return {"model_risk": float(np.mean((pred - y) ** 2)),
          "preconditioned_gd_per_step_risk": float(np.mean((gd - y) ** 2)),
          "own_gamma_gd_risk": float(np.mean((own - y) ** 2)),
          "gap_to_preconditioned_gd_per_step": gap(pred, gd), "gap_to_own_gamma_gd": gap(pred, own)}
