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
from icl_theory.engine.validation import ConfigError, check_choice, check_float, check_int

_PHI: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda z: z,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "cube": lambda z: z**3,
    "abs": jnp.abs,
}
RESPONSES = (*_PHI, "mlp")
GAUSSIAN_RESPONSES = ("linear",)
# Responses whose law is symmetric under f -> -f (w -> -w, or for the network a -> -a): a prompt and
# its mirror (every y negated) are equally likely, the pair `antithetic` draws.
SYMMETRIC_RESPONSES = ("linear", "tanh", "cube", "mlp")


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
  # A finite pool of task vectors (M, d), or None: then every prompt's w is one of them, uniformly, and cov_w
  # stays the prior the pool was drawn from (the closed forms read cov_w: `pool.moment_task` gives the pool's).
  pool: np.ndarray | None = None

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
    if self.pool is not None:
      pool = np.asarray(self.pool, np.float32)
      if pool.ndim != 2 or pool.shape[0] < 1 or pool.shape[1] != d or not np.all(np.isfinite(pool)):
        raise ConfigError(f"pool of shape {pool.shape} is not allowed: a finite (M, d) = (M, {d}) array, M >= 1")
      if self.response != "linear":
        raise ConfigError(f"response={self.response!r} is not allowed with a task pool: 'linear' (a pool holds "
                          "task vectors w)")
      set_("pool", pool)

  @property
  def is_gaussian(self) -> bool:
    """True when (x, y) are jointly Gaussian given w, so the closed forms apply."""
    return self.response in GAUSSIAN_RESPONSES

  def tree_flatten(self):
    return (self.cov_x, self.cov_w, self.noise_std, self.pool), (self.d, self.n, self.response, self.mlp_width)

  @classmethod
  def tree_unflatten(cls, static, leaves):
    # Leaves may be tracers or batched arrays here: skip validation on purpose.
    task = object.__new__(cls)
    for name, value in zip(("cov_x", "cov_w", "noise_std", "pool", "d", "n", "response", "mlp_width"),
                           (*leaves, *static)):
      object.__setattr__(task, name, value)
    return task


class ResponseDraw(NamedTuple):
  """One response function per prompt: w (B, d), or for 'mlp' the hidden weights (B, H, d) and a (B, H)."""
  w: jax.Array
  a: jax.Array | None = None


def draw_task_vectors(key: jax.Array, task: RegressionTask, batch: int) -> jax.Array:
  """`batch` task vectors (B, d): from the prior N(0, cov_w), or uniformly from the task's pool."""
  if task.pool is not None:
    return jnp.asarray(task.pool)[jax.random.randint(key, (batch,), 0, task.pool.shape[0])]
  return draws.normal(key, (batch, task.d)) @ jnp.linalg.cholesky(task.cov_w).T


def _draw_responses(key: jax.Array, task: RegressionTask, batch: int) -> ResponseDraw:
  if task.pool is not None:
    return ResponseDraw(draw_task_vectors(key, task, batch))
  chol_w_DxD = jnp.linalg.cholesky(task.cov_w)
  if task.response == "mlp":
    k_w, k_a = jax.random.split(key)
    w_BxHxD = draws.normal(k_w, (batch, task.mlp_width, task.d)) @ chol_w_DxD.T
    return ResponseDraw(w_BxHxD, draws.normal(k_a, (batch, task.mlp_width)) * jnp.sqrt(2.0 / task.mlp_width))
  return ResponseDraw(draws.normal(key, (batch, task.d)) @ chol_w_DxD.T)


def _evaluate_responses(task: RegressionTask, f: ResponseDraw, x_BxTxD: jax.Array) -> jax.Array:
  """f_b(x_b,t): (B, T)."""
  if task.response == "mlp":
    return jnp.einsum("bth,bh->bt", jax.nn.relu(jnp.einsum("btd,bhd->bth", x_BxTxD, f.w)), f.a)
  return _PHI[task.response](jnp.einsum("btd,bd->bt", x_BxTxD, f.w))


# Nodes and weights of E[h(z)], z ~ N(0, 1), for tanh, which has no closed-form moments: the
# trapezoid rule on [-9, 9], exact to float32 for smooth h (Gauss-Hermite is not: tanh^2 of a
# wide Gaussian saturates like a kink, which polynomials fit poorly).
_GRID_Z = np.linspace(-9.0, 9.0, 513)
_GRID_W = (np.exp(-_GRID_Z**2 / 2) / np.sqrt(2 * np.pi) * (_GRID_Z[1] - _GRID_Z[0])).astype(np.float32)


def _gaussian_mean(h: Callable[[jax.Array], jax.Array], scale_B: jax.Array) -> jax.Array:
  """E[h(scale z)] for z ~ N(0, 1), per prompt, by quadrature."""
  return h(scale_B[:, None] * _GRID_Z.astype(np.float32)[None, :]) @ _GRID_W


def query_moments(task: RegressionTask, f: ResponseDraw) -> tuple[jax.Array, jax.Array]:
  """E[x_q y_q] (B, d) and E[y_q^2] (B,) over the query x_q ~ N(0, cov_x) and its noise, given each prompt's f.

  For y = phi(u), u = w^T x with variance s^2 = w^T cov_x w, Stein's lemma gives
  E[x phi(u)] = cov_x w E[phi'(u)]; E[phi(u)^2] is a moment of N(0, s^2) (tanh's
  both by quadrature). For the ReLU network the cross terms are the arc-cosine
  kernel E[relu(u) relu(v)] = s_u s_v (sin t + (pi - t) cos t) / (2 pi), cos t = corr(u, v).
  """
  sx = task.cov_x
  noise = task.noise_std**2
  if task.response == "mlp":
    sxw_BxHxD = jnp.einsum("de,bhe->bhd", sx, f.w)
    gram_BxHxH = jnp.einsum("bhd,bkd->bhk", f.w, sxw_BxHxD)
    scale_BxH = jnp.sqrt(jnp.maximum(jnp.diagonal(gram_BxHxH, axis1=1, axis2=2), 1e-30))
    cos = jnp.clip(gram_BxHxH / (scale_BxH[:, :, None] * scale_BxH[:, None, :]), -1.0, 1.0)
    angle = jnp.arccos(cos)
    relu_gram = (scale_BxH[:, :, None] * scale_BxH[:, None, :]
                 * (jnp.sqrt(1.0 - cos**2) + (jnp.pi - angle) * cos) / (2 * jnp.pi))
    m_BxD = 0.5 * jnp.einsum("bh,bhd->bd", f.a, sxw_BxHxD)
    return m_BxD, jnp.einsum("bh,bhk,bk->b", f.a, relu_gram, f.a) + noise
  sxw_BxD = f.w @ sx
  var_B = jnp.einsum("bd,bd->b", f.w, sxw_BxD)
  scale_B = jnp.sqrt(var_B)
  slope_B, square_B = {
      "linear": lambda: (jnp.ones_like(var_B), var_B),
      "relu": lambda: (jnp.full_like(var_B, 0.5), var_B / 2),
      "abs": lambda: (jnp.zeros_like(var_B), var_B),
      "cube": lambda: (3 * var_B, 15 * var_B**3),
      "tanh": lambda: (1.0 - _gaussian_mean(lambda u: jnp.tanh(u) ** 2, scale_B),
                       _gaussian_mean(lambda u: jnp.tanh(u) ** 2, scale_B)),
  }[task.response]()
  return slope_B[:, None] * sxw_BxD, square_B + noise


class Contexts(NamedTuple):
  """A batch of contexts with the query integrated out: the context pairs and the query's moments."""
  x: jax.Array        # (B, n, d)
  y: jax.Array        # (B, n)
  xy_query: jax.Array   # (B, d): E[x_q y_q | f]
  yy_query: jax.Array   # (B,): E[y_q^2 | f]


def sample_contexts(key: jax.Array, task: RegressionTask, batch: int, antithetic: bool = False) -> Contexts:
  """The contexts of `sample_prompts(key, task, batch)` (the same draws) with the query integrated out.

  `antithetic`: the second half of the batch mirrors the first (see `mirror`).
  """
  prompts, f = _sample(key, task, batch // 2 if antithetic else batch)
  xy, yy = query_moments(task, f)
  contexts = Contexts(prompts.x, prompts.y, xy, yy)
  return sharding.shard_batch(mirror(contexts) if antithetic else contexts)


def mirror(batch: Prompts | Contexts) -> Prompts | Contexts:
  """The batch followed by its mirror image: the same covariates, every response negated (noise too).

  For a response law symmetric under f -> -f (`SYMMETRIC_RESPONSES`) the mirror is as
  likely as the prompt, so the pair is an unbiased antithetic draw. A one-layer LSA
  at p_x = q21 = 0 predicts -v^T x_q on the mirror, so the gradients on p_x and q21,
  odd under the flip, cancel within each pair: their expectation there is exactly 0,
  and the pair removes that noise, not the signal of any other parameter.
  """
  if isinstance(batch, Contexts):
    flipped = Contexts(batch.x, -batch.y, -batch.xy_query, batch.yy_query)
  else:
    flipped = Prompts(batch.x, -batch.y, batch.x_query, -batch.y_query)
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), batch, flipped)


def _sample(key: jax.Array, task: RegressionTask, batch: int) -> tuple[Prompts, ResponseDraw]:
  k_f, k_x, k_eps = jax.random.split(key, 3)
  n, d = task.n, task.d
  x_BxTxD = draws.normal(k_x, (batch, n + 1, d)) @ jnp.linalg.cholesky(task.cov_x).T
  f = _draw_responses(k_f, task, batch)
  y_BxT = _evaluate_responses(task, f, x_BxTxD) + task.noise_std * draws.normal(k_eps, (batch, n + 1))
  return Prompts(x=x_BxTxD[:, :n], y=y_BxT[:, :n], x_query=x_BxTxD[:, n], y_query=y_BxT[:, n]), f


def sample_prompts(key: jax.Array, task: RegressionTask, batch: int) -> Prompts:
  """`batch` independent prompts (each with its own f). Jit with `static_argnums=2`.

  Each kind of draw is one call for the whole batch (`icl_theory.engine.draws`):
  per-prompt keys cost a Threefry block per prompt, and make the program slower
  to compile and to run.
  """
  return sharding.shard_batch(_sample(key, task, batch)[0])
