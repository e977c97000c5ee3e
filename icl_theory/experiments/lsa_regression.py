"""LSA on in-context regression: config -> task -> model -> trainer -> compare -> workdir.

`run(config, workdir)` trains the layer and writes, in `workdir`:
  summary.json    config, Gamma_eff beside Gamma*, everything `analysis.compare`
                  returns, the baselines' risks, steps, timings
  metrics.jsonl   one row per logging point (step, loss, learning rate, speed)
  lsa.png         Gamma_eff beside Gamma*, and the loss curve against R*
  checkpoints/    orbax checkpoints; rerunning with the same workdir resumes
  config.json     the config, to refuse a different one in the same workdir
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from icl_theory import analysis, files, plotting, theory, trainer
from icl_theory.models import lsa, lsa_fused
from icl_theory.tasks import statistics
from icl_theory.tasks.regression import RegressionTask, sample_prompts
from icl_theory.tasks.statistics import sample_statistics
from icl_theory.validation import ConfigError, check_bool, check_choice, check_float, check_int

# Fields that change only bookkeeping, not the numbers a run produces.
BOOKKEEPING_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints")
SAMPLERS = ("auto", "tokens", "wishart")
_OUTPUTS = ("summary.json", "metrics.jsonl", "lsa.png", "config.json", "checkpoints")


def build_task(config: ml_collections.ConfigDict) -> RegressionTask:
  return RegressionTask(d=config.d, n=config.n, cov_x=config.cov_x, cov_w=config.cov_w,
                        noise_std=config.noise_std, response=config.response, mlp_width=config.mlp_width)


def validate_config(config: ml_collections.ConfigDict) -> RegressionTask:
  """Checks every field (raising ConfigError naming it) and returns the task."""
  task = build_task(config)
  check_int("num_layers", config.num_layers, 1)
  check_float("init_scale", config.init_scale, minimum=0.0, strict=True)
  check_float("vanishing_init_scale", config.vanishing_init_scale, minimum=0.0)
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
  return task


def make_optimizer(config: ml_collections.ConfigDict):
  """The config's optimizer and learning-rate schedule."""
  return trainer.optimizer_from_config(config)


def uses_wishart(task: RegressionTask, sampler: str) -> bool:
  """'auto' samples the context's statistic where the data are Gaussian, the tokens elsewhere."""
  return sampler == "wishart" or (sampler == "auto" and task.is_gaussian)


def freeze_vanishing(params: Any) -> Any:
  """Each layer with p_x and q21 (the last row's first d entries of W_PV and W_KQ) held at 0.

  The sparse parameterisation of Ahn et al. and Zhang, Frei, Bartlett: the
  product with a 0/1 mask passes no gradient to those entries, so they keep
  their initial 0 under any optimizer. An ablation, not the default: the
  theorem is about the full parameterisation.
  """
  def mask(w_DxD):
    return w_DxD * jnp.ones_like(w_DxD).at[-1, :-1].set(0.0)
  return {name: {k: mask(w) for k, w in layer.items()} for name, layer in params.items()}


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


def make_objective(task: RegressionTask, config: ml_collections.ConfigDict, fused: bool = True) -> trainer.Objective:
  """The LSA's squared error on the query, over a fresh batch of prompts.

  With the Wishart sampler each prompt is its context's statistic S and its w,
  and the query is integrated out exactly (`integrated_loss`). Both losses
  estimate the same population risk, so the same parameters minimise them; the
  Wishart one costs the same for any n and has a smaller variance. `fused`: see
  `integrated_loss` (sweeps pass False: vmapped over runs, the fused program
  compiled slower than it ran faster, 55 s against 46 s for the default sweep).
  """
  model = lsa.LSA(num_layers=config.num_layers, init_scale=config.init_scale,
                  vanishing_init_scale=config.vanishing_init_scale)
  batch_size = config.batch_size
  shapes = jax.eval_shape(lambda key: sample_prompts(key, task, 1), jax.random.PRNGKey(0))
  dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # shapes only: nothing to compile

  def init(key):
    return model.init(key, dummy.x, dummy.y, dummy.x_query)["params"]

  def token_loss(params, key, task):
    prompts = sample_prompts(key, task, batch_size)
    pred = model.apply({"params": params}, prompts.x, prompts.y, prompts.x_query)
    return jnp.mean((pred - prompts.y_query) ** 2)

  def wishart_loss(params, key, task):
    return integrated_loss(params, sample_statistics(key, task, batch_size), task, fused)

  loss = wishart_loss if uses_wishart(task, config.sampler) else token_loss
  if config.freeze_vanishing_parts:
    full_loss = loss
    loss = lambda params, key, task: full_loss(freeze_vanishing(params), key, task)
  return trainer.Objective(init=init, loss=loss, batch_size=batch_size)


def eval_key(seed: int) -> jax.Array:
  """The key of a run's evaluation: a function of its seed alone, so a sweep's row equals the single run."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1_000_003)


class RunResult(NamedTuple):
  """What `icl_theory.train` returns: the summary.json dict, and what a notebook needs next."""
  summary: dict[str, Any]
  params: Any            # the trained LSA's parameters (for compare, effective_gamma, ...)
  task: RegressionTask
  history: list[dict]    # the metrics.jsonl rows
  workdir: str


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> RunResult:
  """Trains, compares with the theory, writes the workdir."""
  t_start = time.perf_counter()
  task = validate_config(config)
  files.claim_workdir(workdir, config.to_dict(), _OUTPUTS, BOOKKEEPING_FIELDS, overwrite)
  optimizer, lr_schedule = make_optimizer(config)
  settings = trainer.LoopSettings.from_config(config)
  reference = float(jax.jit(theory.optimal_risk)(task)) if task.is_gaussian else None  # one compile, not ten
  logging.info("Training a %d-layer LSA on %s (d=%d, n=%d) into %s", config.num_layers, config.response,
               task.d, task.n, workdir)
  result = trainer.fit(make_objective(task, config), optimizer, lr_schedule, settings, config.seed, task,
                       workdir, reference_loss=reference, data_parallel=config.get("data_parallel", True))
  params = result.state.params
  stack = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  evaluation, = analysis.evaluate_group(stack(params), stack(task), eval_key(config.seed)[None], config.eval_samples,
                                        config.gamma_mc_samples, devices=jax.local_devices()[:1])
  summary: dict[str, Any] = {
      "config": config.to_dict(),
      "cov_x": task.cov_x, "cov_w": task.cov_w,
      **evaluation,
      "sampler": "wishart" if uses_wishart(task, config.sampler) else "tokens",
      **result.run_figures(config.batch_size),
      "status": "finished",
  }
  summary["wall_seconds"] = time.perf_counter() - t_start
  files.write_json(os.path.join(workdir, "summary.json"), summary)
  plotting.plot_lsa_run(summary, result.history, os.path.join(workdir, "lsa.png"))
  return RunResult(files.to_builtin(summary), params, task, result.history, workdir)


def format_summary(summary: dict[str, Any]) -> str:
  """A short learned-vs-analytic table for the console."""
  def num(v, fmt=".4f"):
    return "-" if v is None else format(v, fmt)

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
            f"model_risk_mc       {summary['model_risk_mc']:.4f} +- {summary['model_risk_mc_stderr']:.4f}"
            f"    (optimal_risk {summary['optimal_risk']:.4f})",
            f"prediction_gap_mse  {summary['prediction_gap_mse']:.2e}"]
  if summary.get("p_x_rel") is not None:
    lines.append(f"|p_x|/|p_y|         {summary['p_x_rel']:.2e}    |q21|/|Q11| {summary['q21_rel']:.2e}")
  lines += ["", "baseline risks:",
            f"  one-step GD (eta={summary['one_step_gd_lr']:.4f})  {summary['one_step_gd_risk']:.4f}",
            f"  preconditioned GD (Gamma*) {summary['preconditioned_gd_risk']:.4f}",
            f"  ridge / Bayes              {summary['ridge_risk']:.4f} +- {summary['ridge_risk_stderr']:.4f}",
            f"  OLS                        {summary['ols_risk']:.4f} +- {summary['ols_risk_stderr']:.4f}",
            "",
            f"{summary['steps']} steps ({summary['sampler']} sampler), "
            f"{num(summary['prompts_per_second'], '.3g')} prompts/s, "
            f"{summary['wall_seconds']:.1f} s wall ({summary['compile_seconds']:.1f} s compiling)"]
  return "\n".join(lines)
