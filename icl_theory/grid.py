r"""Grids of LSA runs: one compiled, vmapped, sharded program per shape; resumable.

The library behind `icl_theory.sweep(config, workdir)` and the command line
`python -m icl_theory.sweep` (icl_theory/sweep.py). `sweep(config, workdir)` expands the grid (n x cov_x x cov_w x noise_std x
response x seed), groups the runs that share array shapes and code (same n and
response), and trains each group as one `trainer.fit_group` program whose run
axis is sharded over every visible device. One thread compiles the groups'
training and evaluation programs ahead of the group that runs, so compilation
overlaps training instead of preceding each group. Each finished group is written
atomically to groups/<group>/rows.json; a rerun skips finished groups and resumes
an unfinished one from its checkpoint. When all groups are done, results.csv and
the figures are (re)written from those files, so a killed and resumed sweep ends
with the same table.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import math
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from icl_theory import analysis, distributed, files, plotting, trainer
from icl_theory.experiments import lsa_regression
from icl_theory.validation import ConfigError, check_int

GRID_FIELDS = ("n_values", "cov_x_values", "cov_w_values", "noise_std_values", "response_values")
COORDINATES = ("n", "cov_x", "cov_w", "noise_std", "response", "seed")
METRICS = ("gamma_rel_error", "gamma_cosine", "learned_risk", "model_risk_mc", "model_risk_mc_stderr",
           "optimal_risk", "excess_risk", "prediction_gap_mse", "p_x_norm", "q21_norm",
           "one_step_gd_lr", "one_step_gd_risk", "preconditioned_gd_risk", "ridge_risk", "ridge_risk_stderr",
           "ols_risk", "ols_risk_stderr", "final_train_loss", "steps", "status")


@dataclasses.dataclass(frozen=True)
class GridRun:
  """One point of the grid."""
  n: int
  cov_x: str
  cov_w: str
  noise_std: float
  response: str
  seed: int

  @property
  def group(self) -> str:
    """Runs with the same group share a compiled program."""
    return f"n{self.n}-{self.response}"

  def config(self, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The single-run config this grid point stands for."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.update(n=self.n, cov_x=self.cov_x, cov_w=self.cov_w, noise_std=self.noise_std,
                  response=self.response, seed=self.seed)
    return config


def _values(config: ml_collections.ConfigDict, field: str) -> tuple:
  values = config[field]
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ConfigError(f"{field}={values!r} is not allowed: a non-empty tuple, e.g. --config.{field}=\"(4,16)\"")
  return tuple(values)


def expand_grid(config: ml_collections.ConfigDict) -> list[GridRun]:
  """Every combination of the grid, in a fixed order (the row order of results.csv)."""
  num_seeds = check_int("num_seeds", config.num_seeds, 1)
  values = [_values(config, field) for field in GRID_FIELDS]
  seeds = [config.base.seed + i for i in range(num_seeds)]
  return [GridRun(n, cov_x, cov_w, noise, response, seed)
          for n, cov_x, cov_w, noise, response in itertools.product(*values) for seed in seeds]


def validate_sweep_config(config: ml_collections.ConfigDict) -> list[GridRun]:
  """Checks the base config and every grid point before anything is compiled; returns the grid."""
  runs = expand_grid(config)
  for run in runs:
    try:
      lsa_regression.validate_config(run.config(config.base))
    except ConfigError as error:
      field = str(error).split("=")[0].split(" ")[0]
      grid_field = f"{field}_values" if f"{field}_values" in GRID_FIELDS else f"base.{field}"
      raise ConfigError(f"{grid_field}: {error}") from None
  if len({(r.n, r.cov_x, r.cov_w, r.noise_std, r.response) for r in runs}) * config.num_seeds != len(runs):
    raise ConfigError("the grid repeats a value: every *_values field must hold distinct values")
  return runs


@dataclasses.dataclass
class _Group:
  """One group's runs and what training and evaluating them needs; `compile` starts its programs' compilation."""
  runs: list[GridRun]
  base: ml_collections.ConfigDict
  tasks: Any = dataclasses.field(init=False)  # the runs' RegressionTasks, stacked
  objective: trainer.Objective = dataclasses.field(init=False)
  optimizer: Any = dataclasses.field(init=False)
  lr_schedule: Any = dataclasses.field(init=False)
  settings: trainer.LoopSettings = dataclasses.field(init=False)
  training: concurrent.futures.Future | None = None    # of a trainer.GroupPrograms (`compile`)
  evaluation: concurrent.futures.Future | None = None  # of an analysis.EvaluationPrograms (`compile`)

  def __post_init__(self):
    tasks = [lsa_regression.build_task(run.config(self.base)) for run in self.runs]
    self.tasks = jax.tree.map(lambda *leaves: np.stack(leaves), *tasks)
    self.objective = lsa_regression.make_objective(tasks[0], self.runs[0].config(self.base), fused=False)
    self.optimizer, self.lr_schedule = lsa_regression.make_optimizer(self.base)
    self.settings = trainer.LoopSettings.from_config(self.base)

  def compile(self, executor: concurrent.futures.Executor, training_here: bool = False) -> None:
    """Compiles the training and the evaluation programs on `executor`'s threads (compiling runs nothing).

    `training_here`: the training programs compile on this thread instead, while the
    executor starts on the evaluation (the first group's: nothing else could run yet).
    """
    compile_training = functools.partial(trainer.compile_group, self.objective, self.optimizer, self.settings,
                                         len(self.runs), self.tasks)
    if not training_here:
      self.training = executor.submit(compile_training)
    param_shapes = jax.eval_shape(jax.vmap(self.objective.init), jax.ShapeDtypeStruct((len(self.runs), 2), np.uint32))
    # Evaluation runs on one device: on forced host devices, linear algebra inside the Monte Carlo
    # scan (SVD, eigh) deadlocks the JAX CPU runtime when several devices run it at once.
    self.evaluation = executor.submit(analysis.compile_evaluation, param_shapes, self.tasks, self.base.eval_samples,
                                      self.base.gamma_mc_samples, devices=jax.local_devices()[:1])
    if training_here:
      self.training = concurrent.futures.Future()
      self.training.set_result(compile_training())


def _train_group(group: _Group, group_dir: str) -> list[dict[str, Any]]:
  """Trains and evaluates one group of same-shape runs; returns one row per run."""
  runs = group.runs
  result = trainer.fit_group(group.objective, group.optimizer, group.lr_schedule, group.settings,
                             [run.seed for run in runs], group.tasks, workdir=group_dir,
                             programs=group.training.result())
  keys = np.stack([np.asarray(lsa_regression.eval_key(run.seed)) for run in runs])
  evaluations = analysis.evaluate_group(result.state.params, group.tasks, keys, programs=group.evaluation.result())
  rows = []
  final_loss = result.history[-1]["loss"] if result.history else [math.nan] * len(runs)
  for r, run in enumerate(runs):
    diverged = bool(result.diverged_at[r])
    metrics = {k: (None if diverged else evaluations[r].get(k)) for k in METRICS}
    metrics.update(final_train_loss=None if diverged else final_loss[r], steps=group.settings.steps,
                   status=f"diverged at step {result.diverged_at[r]}" if diverged else "finished")
    rows.append({**dataclasses.asdict(run), **metrics,
                 "effective_gamma": None if diverged else evaluations[r]["effective_gamma"],
                 "optimal_gamma": evaluations[r]["optimal_gamma"]})
  return rows


def _check_workdir(workdir: str, config: ml_collections.ConfigDict, overwrite: bool) -> None:
  """Refuses a workdir that holds another sweep (in every process); process 0 then claims it."""
  path = os.path.join(workdir, "sweep_config.json")
  wanted = files.to_builtin(config.to_dict())
  for field in lsa_regression.BOOKKEEPING_FIELDS:
    wanted["base"].pop(field, None)
  if not overwrite and os.path.exists(path) and files.read_json(path) != wanted:
    raise ConfigError(f"workdir={workdir!r} holds a sweep of a different config: use a new --workdir "
                      "or pass --overwrite")
  if jax.process_index() == 0:
    if overwrite:
      files.remove(workdir, ("sweep_config.json", "groups", "results.csv", "figures"))
    files.write_json(path, wanted)
  distributed.barrier("sweep: workdir claimed")


def _rows_path(workdir: str, group: str) -> str:
  return os.path.join(workdir, "groups", group, "rows.json")


def _group_cost(runs: list[GridRun], base: ml_collections.ConfigDict) -> float:
  """A rough cost of training a group: its runs times the columns its sampler draws per prompt."""
  run = runs[0]
  wishart = lsa_regression.uses_wishart(lsa_regression.build_task(run.config(base)), base.sampler)
  return len(runs) * (min(run.n, base.d + 1) if wishart else run.n + 1)


def write_results_csv(rows: list[dict[str, Any]], path: str) -> None:
  """One row per run: the grid coordinates, then the metrics (7 significant digits)."""
  files.write_csv(path, rows, COORDINATES + METRICS, significant=7)



def sweep(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> list[dict[str, Any]]:
  """Trains every run of the grid (skipping finished groups) and writes results.csv and figures.

  Returns the rows of results.csv, with each run's Gamma_eff and Gamma* added.
  Under jax.distributed (`icl_theory.distributed`) every process calls this with
  the same arguments: each trains its share of the unfinished groups on its own
  devices, and process 0 waits for every group's rows.json and writes the
  table and figures; the other processes return the rows they trained.
  """
  runs = validate_sweep_config(config)
  _check_workdir(workdir, config, overwrite)
  groups: dict[str, list[GridRun]] = {}
  for run in runs:
    groups.setdefault(run.group, []).append(run)
  process, num_processes = jax.process_index(), jax.process_count()
  # Every process looks before any writes, so all agree on what is left to train.
  unfinished = [name for name in groups if not os.path.exists(_rows_path(workdir, name))]
  distributed.barrier("sweep: planned")
  shares = distributed.assign([_group_cost(groups[name], config.base) for name in unfinished], num_processes)
  mine = [unfinished[i] for i in shares[process]]
  where = f" (process {process} of {num_processes}: {len(mine)} of {len(unfinished)} unfinished groups)" \
      if num_processes > 1 else ""
  logging.info("Sweep of %d runs in %d groups (%d device(s))%s into %s", len(runs), len(groups),
               jax.local_device_count(), where, workdir)
  if num_processes > 1 and not mine:
    logging.warning("process %d has no group to train: a grid of %d unfinished groups over %d processes "
                    "(a group, the runs of one n and response, is the unit of work)", process, len(unfinished),
                    num_processes)
  rows_by_group: dict[str, list[dict]] = {}
  t_start, trained = time.perf_counter(), 0
  # One group runs at a time: two groups running in threads used both CPU cores, but XLA's
  # CPU runtime then deadlocked (a sweep hung at 2% CPU). Compiling runs nothing, so one
  # thread compiles the groups in order, ahead of the one training: compilation, a third
  # of a sweep's time when it came before each group, now overlaps training and evaluation
  # (the default sweep: 43 -> 37 s on 2 cores; a second compile thread slowed training more).
  compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl_theory-compile")
  try:
    jobs = [_Group(groups[name], config.base) for name in mine]
    for i, job in enumerate(jobs):
      job.compile(compiler, training_here=i == 0)
    for name, job in zip(mine, jobs):
      rows_by_group[name] = _train_group(job, os.path.dirname(_rows_path(workdir, name)))
      files.write_json(_rows_path(workdir, name), rows_by_group[name])
      trained += len(groups[name])
      elapsed = time.perf_counter() - t_start
      left = sum(len(groups[g]) for g in mine) - trained
      logging.info("sweep: %d/%d runs trained here (group %s) | %.0f s | ETA %s", trained,
                   trained + left, name, elapsed, trainer.format_eta(elapsed / trained * left))
  finally:
    compiler.shutdown(wait=False, cancel_futures=True)  # after an error: drop the groups not yet compiled
  if process != 0:
    return [row for name in mine for row in rows_by_group[name]]
  rows_by_id: dict[GridRun, dict] = {}
  for name, group in groups.items():
    rows = rows_by_group.get(name) or _wait_for_rows(_rows_path(workdir, name))
    rows_by_id.update(zip(group, rows))
  rows = [rows_by_id[run] for run in runs]
  write_results_csv(rows, os.path.join(workdir, "results.csv"))
  plotting.plot_sweep(rows, os.path.join(workdir, "figures"))
  return rows


def _wait_for_rows(path: str, poll_seconds: float = 1.0) -> list[dict]:
  """A group's rows.json, waiting for the process that trains it to write it."""
  waited = 0.0
  while not os.path.exists(path):
    if waited % 60 == 0:
      logging.info("waiting for %s (another process trains that group)", path)
    time.sleep(poll_seconds)
    waited += poll_seconds
  return files.read_json(path)
