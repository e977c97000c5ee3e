"""In-context linear (and nonlinear) regression: the task and its prompt sampler.

A task draws w ~ N(0, cov_w); a prompt holds n pairs (x_i, y_i) and a query
x_query, x ~ N(0, cov_x) in R^d, y = f(x) + eps, eps ~ N(0, noise_std^2).
The responses f are `linear` (w^T x), `relu`, `tanh`, `cube`, `abs` (of w^T x)
and `mlp`: a random two-layer ReLU network sqrt(2/h) sum_j a_j relu(w_j^T x)
with a_j ~ N(0, 1) and w_j ~ N(0, cov_w), which has the scale of w^T x.

`RegressionTask` is a JAX pytree: the covariances and the noise level are its
leaves (so a sweep can stack and vmap over them); d, n, the response and the
MLP width are static.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.engine import sharding
from icl_theory.engine import draws
from icl_theory.regression.covariance import CovSpec, resolve_covariance
from icl_theory.engine.validation import check_choice, check_float, check_int

_PHI: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda z: z,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "cube": lambda z: z**3,
    "abs": jnp.abs,
}
RESPONSES = (*_PHI, "mlp")
GAUSSIAN_RESPONSES = ("linear",)


class Prompts(NamedTuple):
  """A batch of prompts: B contexts of n pairs, and one query each."""
  x: jax.Array        # (B, n, d)
  y: jax.Array        # (B, n)
  x_query: jax.Array  # (B, d)
  y_query: jax.Array  # (B,)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class RegressionTask:
  """The distribution of prompts; validated on construction, before any tracing.

  `cov_x`, `cov_w`: None (identity), a d x d array, or a spec string
  (see `icl_theory.regression.covariance`); `cov_w` may also be 'inverse' (cov_x^-1).
  After construction both are float32 arrays.
  """
  d: int
  n: int
  cov_x: CovSpec = None
  cov_w: CovSpec = None
  noise_std: float = 0.0
  response: str = "linear"
  mlp_width: int = 16

  def __post_init__(self):
    d = check_int("d", self.d, 1)
    n = check_int("n", self.n, 1)
    check_choice("response", self.response, RESPONSES)
    mlp_width = check_int("mlp_width", self.mlp_width, 1)
    noise = check_float("noise_std", self.noise_std, minimum=0.0)
    cov_x = resolve_covariance(self.cov_x, d, "cov_x")
    cov_w = resolve_covariance(self.cov_w, d, "cov_w", cov_x=cov_x)
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("d", d)
    set_("n", n)
    set_("mlp_width", mlp_width)
    set_("cov_x", cov_x.astype(np.float32))
    set_("cov_w", cov_w.astype(np.float32))
    set_("noise_std", np.float32(noise))

  @property
  def is_gaussian(self) -> bool:
    """True when (x, y) are jointly Gaussian given w, so the closed forms apply."""
    return self.response in GAUSSIAN_RESPONSES

  def tree_flatten(self):
    return (self.cov_x, self.cov_w, self.noise_std), (self.d, self.n, self.response, self.mlp_width)

  @classmethod
  def tree_unflatten(cls, static, leaves):
    # Leaves may be tracers or batched arrays here: skip validation on purpose.
    task = object.__new__(cls)
    for name, value in zip(("cov_x", "cov_w", "noise_std", "d", "n", "response", "mlp_width"),
                           (*leaves, *static)):
      object.__setattr__(task, name, value)
    return task


def _responses(key: jax.Array, task: RegressionTask, chol_w_DxD: jax.Array, x_BxTxD: jax.Array) -> jax.Array:
  """f_b(x_b,t) for a fresh response function f_b per prompt: (B, T)."""
  batch, d = x_BxTxD.shape[0], task.d
  if task.response == "mlp":
    k_w, k_a = jax.random.split(key)
    w_BxHxD = draws.normal(k_w, (batch, task.mlp_width, d)) @ chol_w_DxD.T
    a_BxH = draws.normal(k_a, (batch, task.mlp_width)) * jnp.sqrt(2.0 / task.mlp_width)
    return jnp.einsum("bth,bh->bt", jax.nn.relu(jnp.einsum("btd,bhd->bth", x_BxTxD, w_BxHxD)), a_BxH)
  w_BxD = draws.normal(key, (batch, d)) @ chol_w_DxD.T
  return _PHI[task.response](jnp.einsum("btd,bd->bt", x_BxTxD, w_BxD))


def sample_prompts(key: jax.Array, task: RegressionTask, batch: int) -> Prompts:
  """`batch` independent prompts (each with its own f). Jit with `static_argnums=2`.

  Each kind of draw is one call for the whole batch (`icl_theory.engine.draws`):
  per-prompt keys cost a Threefry block per prompt, and make the program slower
  to compile and to run.
  """
  k_f, k_x, k_eps = jax.random.split(key, 3)
  n, d = task.n, task.d
  x_BxTxD = draws.normal(k_x, (batch, n + 1, d)) @ jnp.linalg.cholesky(task.cov_x).T
  y_BxT = (_responses(k_f, task, jnp.linalg.cholesky(task.cov_w), x_BxTxD)
           + task.noise_std * draws.normal(k_eps, (batch, n + 1)))
  return sharding.shard_batch(Prompts(x=x_BxTxD[:, :n], y=y_BxT[:, :n], x_query=x_BxTxD[:, n],
                                     y_query=y_BxT[:, n]))
