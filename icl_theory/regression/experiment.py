"""LSA on in-context regression, as an engine experiment: config -> task -> objective -> evaluation.

`EXPERIMENT` (an `engine.experiment.Experiment`) is what the engine trains,
sweeps and evaluates; `icl_theory.train(config)` with `config.experiment =
'lsa_regression'` runs it. A single run writes, beside the engine's files:
  summary.json    config, Gamma_eff beside Gamma*, everything `evaluation.compare`
                  returns, the baselines' risks, steps, timings
  lsa.png         Gamma_eff beside Gamma*, and the loss curve against R*
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from icl_theory.configs import lsa as lsa_config
from icl_theory.engine import experiment, group, sharding, trainer
from icl_theory.engine.validation import ConfigError, check_bool, check_choice, check_float, check_int
from icl_theory.regression import (evaluation, lsa, lsa_fused, multistep, parameterization, pool, shift,
                                   statistics, theory)
from icl_theory.regression.statistics import sample_statistics
from icl_theory.regression.task import (GAUSSIAN_RESPONSES, SYMMETRIC_RESPONSES, Contexts, RegressionTask, mirror,
                                        sample_contexts, sample_prompts)

# Fields that change only bookkeeping, not the numbers a run produces.
BOOKKEEPING_FIELDS = experiment.Experiment.bookkeeping_fields
SAMPLERS = ("auto", "tokens", "wishart", "integrated_query")
PRECONDITIONERS = ("none", "curvature")
READOUTS = ("auto", "plus", "minus")


def build_task(config: ml_collections.ConfigDict) -> RegressionTask:
  task = RegressionTask(d=config.d, n=config.n, cov_x=config.cov_x, cov_w=config.cov_w,
                        noise_std=config.noise_std, response=config.response, mlp_width=config.mlp_width)
  if config.get("num_tasks", 0):  # a finite pool of tasks, drawn once from the seed (icl_theory.regression.pool)
    task = dataclasses.replace(task, pool=pool.draw_pool(config.seed, config.num_tasks, task.cov_w))
  return task


def validate_config(config: ml_collections.ConfigDict) -> RegressionTask:
  """Checks every field (raising ConfigError naming it) and returns the task."""
  pool.validate(config)
  task = build_task(config)
  shift.validate(config, task)
  check_int("num_layers", config.num_layers, 1)
  check_float("init_scale", config.init_scale, minimum=0.0, strict=True)
  check_float("vanishing_init_scale", config.vanishing_init_scale, minimum=0.0)
  if config.get("p_y_init") is not None:
    check_float("p_y_init", config.p_y_init)
  validate_parameterization(config)
  if check_bool("freeze_vanishing_parts", config.freeze_vanishing_parts) and config.vanishing_init_scale != 0:
    raise ConfigError(f"vanishing_init_scale={config.vanishing_init_scale!r} is not allowed with "
                      "freeze_vanishing_parts=True: 0, so that the frozen p_x and q21 are 0")
  trainer.validate_training_fields(config)
  check_int("seed", config.seed, 0)
  check_choice("sampler", config.sampler, SAMPLERS)
  if config.sampler == "wishart" and not task.is_gaussian:
    raise ConfigError(f"sampler='wishart' is not allowed with response={config.response!r}: "
                      "it needs jointly Gaussian data (response='linear'); use 'auto' or 'tokens'")
  check_int("gamma_mc_samples", config.gamma_mc_samples, 2)
  if check_choice("preconditioner", config.get("preconditioner", "none"), PRECONDITIONERS) == "curvature" and not task.is_gaussian:
    raise ConfigError(f"preconditioner='curvature' is not allowed with response={config.response!r}: its "
                      "curvature is the closed form of linear responses; use 'none'")
  if check_bool("antithetic", config.get("antithetic", False)):
    if config.response not in SYMMETRIC_RESPONSES:
      raise ConfigError(f"antithetic=True is not allowed with response={config.response!r}: the mirror (every y "
                        f"negated) must be as likely as the prompt; responses {', '.join(SYMMETRIC_RESPONSES)}")
    if uses_wishart(task.response, config.sampler):
      raise ConfigError(f"antithetic=True is not allowed with sampler={config.sampler!r} on linear data (the "
                        "Wishart sampler): use sampler='tokens' or 'integrated_query'")
    if config.batch_size % 2:
      raise ConfigError(f"batch_size={config.batch_size!r} is not allowed with antithetic=True: an even number "
                        "(prompts and their mirrors)")
  if config.get("preconditioner", "none") == "curvature" and config.num_layers != 1:
    raise ConfigError(f"preconditioner='curvature' is not allowed with num_layers={config.num_layers!r}: its "
                      "curvature is that of one layer's Gamma; use 'none'")
  check_float("preconditioner_power", config.get("preconditioner_power", 0.5), minimum=0.0, strict=True)
  return task


def validate_parameterization(config: ml_collections.ConfigDict) -> str:
  """`parameterization` (`icl_theory.regression.parameterization`), and the fields it rules out."""
  name = check_choice("parameterization", config.get("parameterization", "full"), parameterization.PARAMETERIZATIONS)
  if name != "full":
    if config.freeze_vanishing_parts:
      raise ConfigError(f"freeze_vanishing_parts=True is not allowed with parameterization={name!r}: it already "
                        "holds p_x and q21 at 0; use freeze_vanishing_parts=False")
    if config.vanishing_init_scale != 0:
      raise ConfigError(f"vanishing_init_scale={config.vanishing_init_scale!r} is not allowed with "
                        f"parameterization={name!r}: 0, since p_x and q21 are held at 0")
  check_choice("readout", config.get("readout", "auto"), READOUTS)
  return name


def negates_readout(config: ml_collections.ConfigDict) -> bool:
  """`readout`: 'auto' reads minus the query's y-entry in the sparse parameterisations (Ahn et al.), + in 'full'."""
  readout = config.get("readout", "auto")
  return readout == "minus" or (readout == "auto" and config.get("parameterization", "full") != "full")


def p_y_init(config: ml_collections.ConfigDict) -> float | None:
  """`p_y_init`: None means 1 in the sparse parameterisations (Ahn et al.'s fixed p), a draw in 'full'.

  Ahn et al. fix every sparse layer's p_y at 1. Started from a N(0, init_scale^2)
  draw instead, the done run of issue 18 (4 sparse layers, n = 20) stalls at 4x
  the risk it reaches from 1 (0.0011 against 0.00025, same recipe); the full
  parameterisation keeps the draw its one-layer theorem runs were made with.
  """
  value = config.get("p_y_init")
  if value is not None:
    return float(value)
  return None if config.get("parameterization", "full") == "full" else 1.0


def sampler_used(task: RegressionTask, config: ml_collections.ConfigDict) -> str:
  """What a run's sampler setting means for its task: 'wishart', 'integrated_query' or 'tokens'."""
  if uses_wishart(task.response, config.sampler):
    return "wishart"
  return "integrated_query" if config.sampler == "integrated_query" else "tokens"


def uses_wishart(response: str, sampler: str) -> bool:
  """'auto' samples the context's statistic where the data are Gaussian, the tokens elsewhere (no JAX here)."""
  return sampler == "wishart" or (sampler == "auto" and response in GAUSSIAN_RESPONSES)


def sampler_columns(response: str, sampler: str, n: int, d: int) -> int:
  """Columns a prompt is drawn as: Bartlett's factor's min(n, d + 1) for the Wishart sampler, else n + 1 tokens."""
  return min(n, d + 1) if uses_wishart(response, sampler) else n + 1


def freeze_vanishing(params: Any) -> Any:
  """Each layer with p_x and q21 (the last row's first d entries of W_PV and W_KQ) held at 0.

  The sparse parameterisation of Ahn et al. and Zhang, Frei, Bartlett: the
  product with a 0/1 mask passes no gradient to those entries, so they keep
  their initial 0 under any optimizer. An ablation, not the default: the
  theorem is about the full parameterisation.
  """
  def mask(w_DxD):
    return w_DxD * jnp.ones_like(w_DxD).at[-1, :-1].set(0.0)
  return {name: {k: mask(w) for k, w in layer.items()} if name.startswith("layer_") else layer
          for name, layer in params.items()}


def _inverse_power(matrix_dxd: jax.Array, power: float) -> jax.Array:
  """M^-power of a symmetric positive definite M, its eigenvalues first scaled to mean 1."""
  eigenvalues, vectors = jnp.linalg.eigh(matrix_dxd)
  return (vectors * (eigenvalues / eigenvalues.mean()) ** -power) @ vectors.T


def curvature_preconditioner(power: float) -> Callable[[Any, RegressionTask], Any]:
  """Each layer's Q11 gradient G -> H^-power G Sx^-power (`trainer.Objective.precondition`).

  The risk of the predictor x_q^T Gamma g is a quadratic in Gamma whose Hessian is
  Sx (x) H (H = E[g g^T], `theory.moments`), so plain gradient descent moves along
  the weak directions of an ill-conditioned cov_x at the pace of their small
  eigenvalues. With Gamma = p_y Q11^T, power 1 maps the Q11 gradient to the Newton
  step in Gamma; power 1/2 leaves the square root of the condition number. Each
  factor is scaled to mean eigenvalue 1, so isotropic data are left unchanged and
  the learning rate keeps its meaning. The other blocks keep their plain gradients.
  """
  def precondition(grads: Any, task: RegressionTask) -> Any:
    _, h = theory.moments(task)
    left, right = _inverse_power(h, power), _inverse_power(task.cov_x, power)

    def layer(grads_of_layer: Any) -> Any:
      w_kq = grads_of_layer["W_KQ"]
      return {**grads_of_layer, "W_KQ": w_kq.at[:task.d, :task.d].set(left @ w_kq[:task.d, :task.d] @ right)}

    return {name: layer(value) if name.startswith("layer_") else value for name, value in grads.items()}

  return precondition


def integrated_loss(params: Any, stats: statistics.ContextStatistics, task: RegressionTask,
                    fused: bool = True) -> jax.Array:
  """The batch mean of E[(v^T x_q - y_q)^2 | S, w] = (v - w)^T cov_x (v - w) + sigma^2, v the LSA's query map.

  `fused`: a one-layer LSA of small d takes `lsa_fused.integrated_loss`, the same
  number and gradient as one loop over the batch; otherwise the einsum path.
  """
  if fused and lsa_fused.supports(task, lsa.num_layers(params)):
    return lsa_fused.integrated_loss(params, stats, task)
  error_dxB = lsa.query_readout(params, statistics.factor(stats, task), task.n) - stats.w_dxB
  return jnp.mean(jnp.sum(error_dxB * (task.cov_x @ error_dxB), axis=0)) + task.noise_std**2


def query_integrated_loss(params: Any, contexts: Contexts, task: RegressionTask) -> jax.Array:
  """The batch mean of E[(v^T x_q - y_q)^2 | context, f] = v^T cov_x v - 2 v^T E[x_q y_q] + E[y_q^2].

  The LSA's prediction is linear in the query, v^T x_q (`lsa.query_readout`), so
  the query can be integrated out exactly for any response with known moments
  (`task.query_moments`): the same population risk as the token loss, without the
  query's share of the gradient noise (for y = (w^T x)^3 it has variance 15 s^6).
  """
  factor_DxNxB = jnp.concatenate([contexts.x, contexts.y[..., None]], axis=-1).transpose(2, 1, 0)
  v_dxB = lsa.query_readout(params, factor_DxNxB, task.n)
  quadratic_B = jnp.einsum("db,de,eb->b", v_dxB, task.cov_x, v_dxB)
  return jnp.mean(quadratic_B - 2 * jnp.einsum("db,bd->b", v_dxB, contexts.xy_query) + contexts.yy_query)


def make_objective(task: RegressionTask, config: ml_collections.ConfigDict, fused: bool = True) -> trainer.Objective:
  """The LSA's squared error on the query, over a fresh batch of prompts.

  With the Wishart sampler each prompt is its context's statistic S and its w,
  and the query is integrated out exactly (`integrated_loss`). Both losses
  estimate the same population risk, so the same parameters minimise them; the
  Wishart one costs the same for any n and has a smaller variance. `fused`: see
  `integrated_loss` (False: the einsum path, the reference the tests hold it to).
  """
  model = lsa.LSA(num_layers=config.num_layers, init_scale=config.init_scale,
                  vanishing_init_scale=config.vanishing_init_scale, negate_readout=negates_readout(config),
                  p_y_init=p_y_init(config))
  batch_size = config.batch_size
  antithetic = config.get("antithetic", False)
  # A dummy prompt for the shapes `init` traces: host zeros, as eager jnp.zeros would compile a
  # program per shape (0.1 s of each sweep group's set-up).
  shapes = jax.eval_shape(lambda key: sample_prompts(key, task, 1), jax.ShapeDtypeStruct((2,), jnp.uint32))
  dummy = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

  def init(key):
    return model.init(key, dummy.x, dummy.y, dummy.x_query)["params"]

  def token_loss(params, key, task):
    if antithetic:
      prompts = sharding.shard_batch(mirror(sample_prompts(key, task, batch_size // 2)))
    else:
      prompts = sample_prompts(key, task, batch_size)
    pred = model.apply({"params": params}, prompts.x, prompts.y, prompts.x_query)
    return jnp.mean((pred - prompts.y_query) ** 2)

  def wishart_loss(params, key, task):
    return integrated_loss(params, sample_statistics(key, task, batch_size), task, fused)

  def integrated_query_loss(params, key, task):
    return query_integrated_loss(params, sample_contexts(key, task, batch_size, antithetic), task)

  wishart = uses_wishart(task.response, config.sampler)
  if wishart:
    loss = wishart_loss
  elif config.sampler == "integrated_query":
    loss = integrated_query_loss
  else:
    loss = token_loss
  if config.freeze_vanishing_parts:
    full_loss = loss
    loss = lambda params, key, task: full_loss(freeze_vanishing(params), key, task)
  name = config.get("parameterization", "full")
  if name != "full":  # masked entries start at 0 and get no gradient: they stay exactly 0
    unmasked_init, unmasked_loss = init, loss
    init = lambda key: parameterization.apply(unmasked_init(key), name)
    loss = lambda params, key, task: unmasked_loss(parameterization.apply(params, name), key, task)
  precondition = None
  if config.get("preconditioner", "none") == "curvature":
    precondition = curvature_preconditioner(config.get("preconditioner_power", 0.5))
  one_at_a_time = (wishart and fused and lsa_fused.supports(task, config.num_layers)
                   and batch_size * sampler_columns(task.response, config.sampler, task.n, task.d)
                   >= ONE_AT_A_TIME_MIN_WORK)
  return trainer.Objective(init=init, loss=loss, batch_size=batch_size, precondition=precondition,
                           runs_one_at_a_time=one_at_a_time)


def eval_key(seed: int) -> jax.Array:
  """The key of a run's evaluation (the engine's `eval_key`): a function of its seed alone."""
  return group.eval_key(seed)


def format_summary(summary: dict[str, Any]) -> str:
  """A short learned-vs-analytic table for the console."""
  def num(v, fmt=".4f"):
    return "-" if v is None else format(v, fmt)

  # A deep LSA's risk can be 1e-4, which four decimals would print as 0.0001.
  risk_format = ".4f" if summary["model_risk_mc"] >= 0.01 else ".3e"

  lines = []
  eff, opt = summary.get("effective_gamma"), np.asarray(summary["optimal_gamma"])
  if eff is not None:
    eff = np.asarray(eff)
    d = eff.shape[0]
    off = lambda m: np.abs(m - np.diag(np.diag(m))).sum() / max(d * (d - 1), 1)
    lines += [f"{'':28s}{'learned':>12s}{'analytic':>12s}",
              f"{'Gamma diagonal (mean)':28s}{np.diag(eff).mean():12.4f}{np.diag(opt).mean():12.4f}",
              f"{'Gamma off-diagonal |mean|':28s}{off(eff):12.4f}{off(opt):12.4f}",
              f"{'risk R(Gamma)':28s}{num(summary['learned_risk']):>12s}{num(summary['optimal_risk']):>12s}",
              ""]
  lines += [f"gamma_rel_error     {num(summary['gamma_rel_error'])}    gamma_cosine {num(summary['gamma_cosine'], '.5f')}",
            f"model_risk_mc       {summary['model_risk_mc']:{risk_format}} "
            f"+- {summary['model_risk_mc_stderr']:{risk_format}}"
            f"    (optimal_risk {summary['optimal_risk']:.4f})",
            f"prediction_gap_mse  {summary['prediction_gap_mse']:.2e}"]
  if summary.get("p_x_rel") is not None:
    lines.append(f"|p_x|/|p_y|         {summary['p_x_rel']:.2e}    |q21|/|Q11| {summary['q21_rel']:.2e}")
  config = summary["config"]
  # Noiseless linear data with n >= d: the context determines w, so ridge and OLS predict exactly.
  exact = (config["noise_std"] == 0 and config["response"] == "linear" and config["n"] >= config["d"])
  why = "    (exact: noiseless data and n >= d determine w)" if exact else ""
  if summary.get("num_tasks"):  # a finite pool of tasks (icl_theory.regression.pool)
    lines += [f"pool of {summary['num_tasks']} tasks: Gamma_eff vs Gamma*_pool {num(summary['pool_gamma_rel_error'])}"
              f" (rel. error); fresh-task risk of Gamma*_pool {num(summary['pool_optimal_fresh_risk'])}",
              f"  on the pool's tasks: network {summary['model_risk_mc_pool']:.4f}, dMMSE "
              f"{summary['pool_bayes_risk_pool']:.4f}, ridge {summary['ridge_risk_pool']:.4f}; "
              f"dMMSE on fresh tasks {summary['pool_bayes_risk']:.4f}"]
  if summary.get("multi_step_gd_risk") is not None:
    steps = config["num_layers"]
    lines += [f"risk / {steps}-step GD's {summary['risk_over_multi_step_gd']:.4g}"]
  lines += ["", "baseline risks:",
            f"  one-step GD (eta={summary['one_step_gd_lr']:.4f})  {summary['one_step_gd_risk']:.4f}",
            f"  preconditioned GD (Gamma*) {summary['preconditioned_gd_risk']:.4f}",
            *_multi_step_lines(summary),
            f"  ridge / Bayes              {summary['ridge_risk']:.4f} +- {summary['ridge_risk_stderr']:.4f}{why}",
            f"  OLS                        {summary['ols_risk']:.4f} +- {summary['ols_risk_stderr']:.4f}{why}",
            "",
            f"{summary['steps']} steps ({summary['sampler']} sampler), "
            f"{num(summary['prompts_per_second'], '.3g')} prompts/s, "
            f"{summary['wall_seconds']:.1f} s wall ({summary['compile_seconds']:.1f} s compiling)"]
  return "\n".join(lines)


def _multi_step_lines(summary: dict[str, Any]) -> list[str]:
  if summary.get("multi_step_gd_risk") is None:
    return []
  steps = summary["config"]["num_layers"]
  return [f"  {steps}-step GD (eta={summary['multi_step_gd_lr']:.4f})  {summary['multi_step_gd_risk']:.4g} "
          f"+- {summary['multi_step_gd_risk_stderr']:.2g}",
          f"  {steps}-step GD, P = cov_x^-1 (eta={summary['multi_step_preconditioned_gd_lr']:.4f})  "
          f"{summary['multi_step_preconditioned_gd_risk']:.4g} "
          f"+- {summary['multi_step_preconditioned_gd_risk_stderr']:.2g}"]


METRICS = ("gamma_rel_error", "gamma_cosine", "learned_risk", "model_risk_mc", "model_risk_mc_stderr",
           "optimal_risk", "excess_risk", "prediction_gap_mse", "p_x_norm", "q21_norm",
           "one_step_gd_lr", "one_step_gd_risk", "preconditioned_gd_risk", "ridge_risk", "ridge_risk_stderr",
           "ols_risk", "ols_risk_stderr", "multi_step_gd_lr", "multi_step_gd_risk", "multi_step_preconditioned_gd_risk",
           "risk_over_multi_step_gd", "final_train_loss", "steps", "status")


# Single runs whose steps draw at least this many prompt-columns (batch_size x cost) split each batch
# over one CPU device per core. Measured on 2 cores, training time on 1 against 2 devices: 3000 steps of
# 2048 prompts at d = n = 10 (20480) 4.1-4.5 s against 3.5 s; four sparse layers, 1024 prompts at n = 20
# (24576) 15.7 s against 9.3 s; the default run (6144) 0.57 s against 0.56 s; 256 prompts (1536)
# 0.44 s against 0.76 s. Below this a step is too short for the split to pay. Since a single run's step
# has no run axis (`sharding.vmap_runs`), the job trains as fast either way (whole commands, 1 device
# against 2: 0.98) while four sparse layers still gain 1.8x (17.7-19.0 s against 9.8-10.7 s).
DATA_PARALLEL_MIN_WORK = 16_384
# A group's runs train one after another on each CPU device (`trainer.Objective.runs_one_at_a_time`)
# where they take the fused one-layer loss and a step draws at least this many prompt-columns. Measured
# per run-step, 6 runs of d = 5, n = 16 on one device, vmapped against one at a time: batch 32 (192)
# 0.020 against 0.022 ms; 64 (384) 0.037 against 0.028; 128 0.059 against 0.043; 512 0.201 against
# 0.147. The einsum path of two layers at batch 256 went the other way (1.01 against 1.26 ms), and the
# token sampler gained 4-7%: both stay vmapped.
ONE_AT_A_TIME_MIN_WORK = 256


class LSARegression(experiment.Experiment):
  """One or more LSA layers on in-context linear (or nonlinear) regression, held to the closed forms."""

  name = "lsa_regression"
  run_figure = "lsa.png"
  evaluation_fields = ("eval_samples", "gamma_mc_samples", "pool_bayes_samples") + shift.TEST_FIELDS
  training_axes = {"n_values": "n", "cov_x_values": "cov_x", "cov_w_values": "cov_w",
                   "noise_std_values": "noise_std", "response_values": "response", "num_layers_values": "num_layers",
                   "num_tasks_values": "num_tasks", "parameterization_values": "parameterization"}
  # Evaluation-only: every trained run is scored on each test distribution (icl_theory.regression.shift).
  evaluation_axes = {f"{field}_values": field for field in shift.TEST_FIELDS}
  # Covariances and noise enter the task's arrays only: runs differing in them share a program.
  array_fields = ("cov_x", "cov_w", "noise_std")
  metrics = METRICS + pool.METRICS

  def defaults(self):
    return lsa_config.get_config().to_dict()

  def validate(self, config):
    return validate_config(config)

  def build_task(self, config):
    return build_task(config)

  def describe(self, config, task):
    return (f"a {config.num_layers}-layer LSA ({config.get('parameterization', 'full')}) on {config.response} "
            f"responses (d={task.d}, n={task.n})")

  def cost(self, config):
    """The columns its sampler draws per prompt, times the layers (from the config alone: no JAX)."""
    return float(sampler_columns(config.response, config.sampler, config.n, config.d) * config.num_layers)

  def splits_over_cpu_cores(self, config):
    """A step of at least DATA_PARALLEL_MIN_WORK prompt-columns (batch_size x `cost`) trains split over the cores."""
    return int(config.batch_size) * self.cost(config) >= DATA_PARALLEL_MIN_WORK

  def objective(self, task, config, num_runs):
    # A sweep's groups train the fused loss too: the default 60-run sweep took 35 s instead of the einsum
    # path's 39 s vmapped, and 31 s cold looped per CPU device (`make_objective`'s runs_one_at_a_time).
    return make_objective(task, config, fused=True)

  def reference(self, task, config):
    """One layer: R* (of the pool, for a finite pool); L > 1: L-step GD at its best step size (20k prompts: a
    progress line's yardstick), not the one-layer R*."""
    if config.num_layers == 1:
      if task.pool is not None:  # the training loss's optimum is the pool's
        return "R*", float(theory.gamma_risk(pool.pool_optimal_gamma(task), pool.moment_task(task)))
      return ("R*", float(jax.jit(theory.optimal_risk)(task))) if task.is_gaussian else None
    found = jax.jit(multistep.search, static_argnums=(2, 3))(task, jax.random.PRNGKey(0), config.num_layers, 20_000)
    return f"{config.num_layers}-step GD", float(found.risk)

  def compile_evaluation(self, param_shapes, tasks, configs, devices):
    return evaluation.compile_evaluation(param_shapes, shift.evaluation_tasks(tasks, configs), configs[0].eval_samples,
                                         configs[0].gamma_mc_samples, devices=devices)

  def evaluate(self, params, tasks, configs, keys, compiled=None):
    """compare() and the baselines on each run's test task (fresh tasks from the prior), and a pool's metrics."""
    rows = evaluation.evaluate_group(params, shift.evaluation_tasks(tasks, configs), keys, configs[0].eval_samples,
                                     configs[0].gamma_mc_samples, devices=jax.local_devices()[:1], programs=compiled)
    if tasks.pool is None:
      return [{**row, **pool.empty_metrics()} for row in rows]
    run = lambda tree, r: jax.tree.map(lambda x: np.asarray(x)[r], tree)
    return [{**row, **pool.pool_metrics(run(params, r), shift.test_task(run(tasks, r), config), keys[r],
                                        config.eval_samples, config.get("pool_bayes_samples", 4096))}
            for r, (row, config) in enumerate(zip(rows, configs))]

  def summary_header(self, task, config):
    return {"cov_x": task.cov_x, "cov_w": task.cov_w, "sampler": sampler_used(task, config)}

  def format_summary(self, summary):
    return format_summary(summary)

  def format_sweep(self, rows):
    finished = [r for r in rows if r["status"] == "finished"]
    lines = [f"{len(finished)}/{len(rows)} runs finished"]
    errors = np.array([r["gamma_rel_error"] for r in finished if r["gamma_rel_error"] is not None])
    if errors.size:
      lines.append(f"gamma_rel_error: median {np.median(errors):.4f}, max {errors.max():.4f}")
    return "\n".join(lines)

  def plot_run(self, summary, history, path):
    from icl_theory.regression import plots  # matplotlib: imported where a figure is drawn (engine.plotting)
    plots.plot_lsa_run(summary, history, path)

  def plot_sweep(self, rows, directory):
    from icl_theory.regression import plots
    plots.plot_sweep(rows, directory)

  def group_name(self, config, varying):
    name = config.get("parameterization", "full")
    pooled = f"-M{config.num_tasks}" if config.get("num_tasks", 0) else ""
    return (f"n{config.n}-{config.response}" + ("" if config.num_layers == 1 else f"-L{config.num_layers}")
            + ("" if name == "full" else f"-{name}") + pooled)


EXPERIMENT = LSARegression()
