"""A finite pool of pretraining tasks (Raventos et al. 2023): its draw, its exact one-layer theory, its Bayes predictor.

A run with `num_tasks = M > 0` draws M task vectors w_1..w_M ~ N(0, cov_w) once, from its seed,
and every training prompt uses one of them, uniformly (`RegressionTask.pool`).

Within the predictor family x_q^T Gamma g (the sparse layer, or the full one with p_x and q21 at 0)
the squared error is a quadratic form in w, so the training loss depends on the task law only
through its second moment E[w w^T] = W^T W / M (docs/theory.md, "A finite pool of tasks"). Every
closed form of `theory` then holds with cov_w replaced by that moment (`moment_task`): the trained
optimum is `pool_optimal_gamma`, and its risk on fresh tasks from the prior is `theory.gamma_risk`
of it under the prior. The pool's mean, not zero for a finite pool, enters only predictors with a
y-independent term: the full layer's p_x^T S_xx Q11 x_q, which `pool_metrics` measures.

The two Bayes predictors: ridge (the posterior mean under the Gaussian prior, `theory.bayes_posterior`)
and `discrete_posterior_mean`, the posterior mean under the uniform prior over the pool (dMMSE).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from icl_theory.engine import precision
from icl_theory.engine.validation import ConfigError, check_int
from icl_theory.regression import lsa, theory
from icl_theory.regression.task import Contexts, RegressionTask, sample_contexts

_POOL_STREAM = 7_919  # the pool's random stream within a seed: apart from the engine's init, batch and eval keys
_BAYES_MEMORY = 1 << 22  # prompts x pool tasks per chunk of the discrete posterior: bounds its (B, M) matrix

METRICS = ("pool_gamma_rel_error", "learned_pool_risk", "pool_optimal_fresh_risk",
           "pool_optimal_pool_risk", "model_risk_mc_pool", "model_risk_mc_pool_stderr",
           "pool_bayes_risk", "pool_bayes_risk_stderr", "pool_bayes_risk_pool", "pool_bayes_risk_pool_stderr",
           "ridge_risk_pool", "ridge_risk_pool_stderr", "p_x_mean_cosine", "p_x_pool_risk_gain")
_MATRICES = ("task_pool_second_moment", "task_pool_mean", "pool_optimal_gamma")


def draw_pool(seed: int, num_tasks: int, cov_w: np.ndarray) -> np.ndarray:
  """The run's M task vectors (M, d), w_m ~ N(0, cov_w): a function of the seed alone (numpy, nothing compiles)."""
  rng = np.random.default_rng([int(seed), _POOL_STREAM])
  z = rng.standard_normal((num_tasks, cov_w.shape[0]))
  return (z @ np.linalg.cholesky(np.asarray(cov_w, np.float64)).T).astype(np.float32)


def validate(config: ml_collections.ConfigDict) -> int:
  """Checks `num_tasks` (0: a fresh w per prompt) and the fields it rules out; returns it."""
  num_tasks = check_int("num_tasks", config.get("num_tasks", 0), 0)
  if not num_tasks:
    return 0
  if config.response != "linear":
    raise ConfigError(f"num_tasks={num_tasks} is not allowed with response={config.response!r}: a pool holds "
                      "task vectors w of linear responses; use response='linear' or num_tasks=0")
  if config.get("antithetic", False):
    raise ConfigError(f"antithetic=True is not allowed with num_tasks={num_tasks}: the mirror of a pool task (-w) "
                      "is not in the pool; use antithetic=False")
  if config.get("preconditioner", "none") != "none":
    raise ConfigError(f"preconditioner={config.preconditioner!r} is not allowed with num_tasks={num_tasks}: its "
                      "curvature is the prior's; use 'none'")
  check_int("pool_bayes_samples", config.get("pool_bayes_samples", 4096), 2)
  return num_tasks


def second_moment(pool: jax.Array) -> jax.Array:
  """W^T W / M: the pool's E[w w^T], all the one-layer family sees of the task law."""
  return pool.T @ pool / pool.shape[0]


def without_pool(task: RegressionTask) -> RegressionTask:
  """The same task with fresh tasks from the prior (no validation: it may hold tracers)."""
  return RegressionTask.tree_unflatten((task.d, task.n, task.response, task.mlp_width),
                                       (task.cov_x, task.cov_w, task.noise_std, None))


def moment_task(task: RegressionTask) -> RegressionTask:
  """The task whose closed forms are the pool's: cov_w := W^T W / M (may be singular: not validated)."""
  return RegressionTask.tree_unflatten((task.d, task.n, task.response, task.mlp_width),
                                       (task.cov_x, second_moment(task.pool), task.noise_std, None))


@precision.scoped
def pool_optimal_gamma(task: RegressionTask) -> jax.Array:
  """Gamma*_pool = M2 Sx H_pool^-1, M2 = W^T W / M: the optimum of the family on the pool's prompts."""
  return theory.optimal_gamma(moment_task(task))


@precision.scoped
def pool_optimal_fresh_risk(task: RegressionTask) -> jax.Array:
  """R(Gamma*_pool) on fresh tasks from the prior: what a layer trained on the pool scores on new tasks."""
  return theory.gamma_risk(pool_optimal_gamma(task), without_pool(task))


def discrete_posterior_mean(x_BxNxD: jax.Array, y_BxN: jax.Array, pool: jax.Array, noise_var: jax.Array) -> jax.Array:
  """Posterior mean of w (B, d) under the uniform prior over the pool's rows and Gaussian noise (dMMSE).

  The log-likelihood of task m is -(|y|^2 - 2 w_m^T X^T y + w_m^T X^T X w_m) / (2 sigma^2); |y|^2 is
  the same for every m and drops out of the softmax. The quadratic term is X^T X against the pool's
  outer products, one (B, d^2) x (d^2, M) product.
  """
  d = pool.shape[1]
  xtx_BxF = jnp.einsum("bnd,bne->bde", x_BxNxD, x_BxNxD).reshape(-1, d * d)
  xty_BxD = jnp.einsum("bnd,bn->bd", x_BxNxD, y_BxN)
  outer_MxF = jnp.einsum("md,me->mde", pool, pool).reshape(-1, d * d)
  logits_BxM = (2 * xty_BxD @ pool.T - xtx_BxF @ outer_MxF.T) / (2 * noise_var)
  return jax.nn.softmax(logits_BxM, axis=-1) @ pool


def _linear_risk(v_BxD: jax.Array, contexts: Contexts, cov_x: jax.Array) -> jax.Array:
  """E[(v^T x_q - y_q)^2 | context, w] = v^T Sx v - 2 v^T E[x_q y_q] + E[y_q^2] per prompt: the query integrated out."""
  return jnp.einsum("bd,de,be->b", v_BxD, cov_x, v_BxD) - 2 * jnp.einsum("bd,bd->b", v_BxD, contexts.xy_query) \
      + contexts.yy_query


def _chunk(num_tasks: int, num_samples: int) -> int:
  return int(max(1, min(num_samples, 8192, _BAYES_MEMORY // max(num_tasks, 1))))


@precision.scoped
@functools.partial(jax.jit, static_argnames="num_samples")
def predictor_risks_mc(key: jax.Array, task: RegressionTask, num_samples: int, params: Any, pool: jax.Array | None
                       ) -> dict[str, theory.Estimate]:
  """Monte Carlo risks on `task`'s prompts (its pool's tasks, or fresh ones) of the LSA, ridge and dMMSE.

  All three predict linearly in the query, so the query is integrated out exactly (`_linear_risk`) and
  the three are scored on the same contexts. `params`: an LSA's (None: not scored). `pool`: the
  discrete prior of dMMSE (its noise variance is the task's); None: neither Bayes predictor is scored
  (dMMSE costs prompts x pool size).
  """
  chunk = _chunk(1 if pool is None else pool.shape[0], num_samples)
  num_chunks = -(-num_samples // chunk)
  noise_var = task.noise_std**2

  def risks(k):
    contexts = sample_contexts(k, task, chunk)
    out = {}
    if pool is not None:
      posterior_mean = lambda x, y: theory.bayes_posterior(x, y, task.cov_w, noise_var)[0]
      out["ridge"] = _linear_risk(jax.vmap(posterior_mean)(contexts.x, contexts.y), contexts, task.cov_x)
      out["dmmse"] = _linear_risk(discrete_posterior_mean(contexts.x, contexts.y, pool, noise_var), contexts,
                                  task.cov_x)
    if params is not None:
      factor_DxNxB = jnp.concatenate([contexts.x, contexts.y[..., None]], axis=-1).transpose(2, 1, 0)
      out["model"] = _linear_risk(lsa.query_readout(params, factor_DxNxB, task.n).T, contexts, task.cov_x)
    return {name: (r.sum(), (r**2).sum()) for name, r in out.items()}

  def body(total, i):
    return jax.tree.map(jnp.add, total, risks(jax.random.fold_in(key, i))), None

  shapes = jax.eval_shape(risks, key)
  total, _ = jax.lax.scan(body, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), jnp.arange(num_chunks))
  return {name: theory.mean_and_stderr(s, s2, num_chunks * chunk) for name, (s, s2) in total.items()}


def empty_metrics() -> dict[str, Any]:
  """The pool's columns of a run without a pool (num_tasks = 0)."""
  return {**{name: None for name in METRICS + _MATRICES}, "num_tasks": 0}


@precision.scoped
def pool_metrics(params: Any, task: RegressionTask, key: jax.Array, num_samples: int,
                 bayes_samples: int) -> dict[str, Any]:
  """What a run trained on `task`'s pool computes, beside the pool's exact theory and the two Bayes predictors.

  Keys: task_pool_second_moment, task_pool_mean, pool_optimal_gamma (matrices); pool_optimal_fresh_risk
  (the theory's risk on fresh tasks) and pool_optimal_pool_risk (on the pool's); for one layer
  pool_gamma_rel_error (||Gamma_eff - Gamma*_pool|| / ||Gamma*_pool||) and learned_pool_risk (R of
  Gamma_eff on the pool, exact); model_risk_mc_pool (the network on the pool's tasks, Monte Carlo over
  `num_samples` prompts); pool_bayes_risk (dMMSE on fresh tasks), pool_bayes_risk_pool and
  ridge_risk_pool (on the pool's tasks), over `bayes_samples` prompts (dMMSE's None when sigma = 0);
  p_x_mean_cosine (the cosine between the full layer's y-independent readout Q11^T Sx p_x and the
  pool's mean task) and
  p_x_pool_risk_gain (learned_pool_risk - model_risk_mc_pool: what the terms off the family, p_x's
  and q21's, gain on the pool's tasks).
  """
  params = params.get("params", params)
  pool = jnp.asarray(task.pool)
  k_model, k_fresh, k_pool = jax.random.split(key, 3)
  gamma_pool = pool_optimal_gamma(task)
  moments = moment_task(task)
  out: dict[str, Any] = {
      "num_tasks": int(pool.shape[0]),
      "task_pool_second_moment": second_moment(pool), "task_pool_mean": pool.mean(axis=0),
      "pool_optimal_gamma": gamma_pool,
      "pool_optimal_fresh_risk": pool_optimal_fresh_risk(task),
      "pool_optimal_pool_risk": theory.gamma_risk(gamma_pool, moments),
  }
  model = predictor_risks_mc(k_model, task, num_samples, params, None)["model"]
  out["model_risk_mc_pool"], out["model_risk_mc_pool_stderr"] = model
  fresh = predictor_risks_mc(k_fresh, without_pool(task), bayes_samples, None, pool)
  on_pool = predictor_risks_mc(k_pool, task, bayes_samples, None, pool)
  out["pool_bayes_risk"], out["pool_bayes_risk_stderr"] = fresh["dmmse"]
  out["pool_bayes_risk_pool"], out["pool_bayes_risk_pool_stderr"] = on_pool["dmmse"]
  out["ridge_risk_pool"], out["ridge_risk_pool_stderr"] = on_pool["ridge"]
  if not float(task.noise_std) > 0:  # dMMSE's likelihood needs noise: without it the posterior is not defined
    out.update({k: None for k in ("pool_bayes_risk", "pool_bayes_risk_stderr", "pool_bayes_risk_pool",
                                  "pool_bayes_risk_pool_stderr")})
  out.update(pool_gamma_rel_error=None, learned_pool_risk=None, p_x_mean_cosine=None, p_x_pool_risk_gain=None)
  if lsa.num_layers(params) == 1:
    gamma = lsa.effective_gamma(params)
    out["pool_gamma_rel_error"] = jnp.linalg.norm(gamma - gamma_pool) / jnp.linalg.norm(gamma_pool)
    out["learned_pool_risk"] = theory.gamma_risk(gamma, moments)
    out["p_x_pool_risk_gain"] = out["learned_pool_risk"] - out["model_risk_mc_pool"]
    layer = params["layer_0"]
    readout = layer["W_KQ"][:-1, :-1].T @ task.cov_x @ layer["W_PV"][-1, :-1]
    mean = pool.mean(axis=0)
    norms = jnp.linalg.norm(readout) * jnp.linalg.norm(mean)
    out["p_x_mean_cosine"] = jnp.where(norms > 0, jnp.vdot(readout, mean) / jnp.where(norms > 0, norms, 1.0), 0.0)
  as_python = lambda v: None if v is None else (np.asarray(v).tolist() if np.ndim(v) else float(v))
  return {k: v if k == "num_tasks" else as_python(v) for k, v in out.items()}
