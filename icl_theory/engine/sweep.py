r"""Grids of runs of any experiment: one compiled, vmapped, sharded program per group; resumable.

A sweep config holds `base` (a run config of the experiment `base.experiment`),
one tuple of values per axis the experiment declares (`Experiment.training_axes`
make runs, `Experiment.evaluation_axes` evaluate every trained run at each value
without retraining) and `num_seeds` (seeds base.seed, base.seed + 1, ...).

`sweep(experiment, config, workdir)` expands the grid, groups the runs that
share programs (runs that differ only in `Experiment.array_fields` and seed),
and trains each group as one `engine.group.Group`, its run axis sharded over
every visible device. One thread compiles each group's training and evaluation
programs ahead of the group that runs, so compilation overlaps the work. Each
finished group is written atomically to groups/<group>/: rows.json (one row per
run and evaluation point), params.msgpack (its runs' parameters), checkpoints.
A rerun skips finished groups, resumes an unfinished one from its checkpoint and
re-evaluates (without training) a finished group whose evaluation points changed.
When all groups are done, results.csv and the figures are (re)written from
those files, so a killed and resumed sweep ends with the same table.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import itertools
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from icl_theory.engine import compiling, distributed, files, trainer
from icl_theory.engine import workdir as workdirs
from icl_theory.engine.experiment import Experiment
from icl_theory.engine.group import Group, with_fields
from icl_theory.engine.validation import ConfigError, check_int

ROWS_FILE = "rows.json"
SWEEP_CONFIG_FILE = "sweep_config.json"


@dataclasses.dataclass(frozen=True)
class GridRun:
  """One training point of the grid: the run fields its axes set, and its seed."""
  values: tuple[tuple[str, Any], ...]
  seed: int

  def config(self, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The single-run config this grid point stands for."""
    return with_fields(base, {**dict(self.values), "seed": self.seed})

  def coordinates(self) -> dict[str, Any]:
    return {**dict(self.values), "seed": self.seed}


def _values(config: ml_collections.ConfigDict, field: str) -> tuple:
  values = config[field]
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ConfigError(f"{field}={values!r} is not allowed: a non-empty tuple, e.g. --config.{field}=\"(4,16)\"")
  if len(set(map(repr, values))) != len(values):
    raise ConfigError(f"{field}={tuple(values)!r} is not allowed: distinct values (the grid would repeat a run)")
  return tuple(values)


def _axes(config: ml_collections.ConfigDict, axes: dict[str, str]) -> list[tuple[str, str, tuple]]:
  """(sweep field, run field, values) for each of `axes` that the sweep config sets (None: not swept)."""
  return [(field, run_field, _values(config, field)) for field, run_field in axes.items()
          if field in config and config[field] is not None]


def expand_grid(experiment: Experiment, config: ml_collections.ConfigDict) -> list[GridRun]:
  """Every training point of the grid, in a fixed order (the row order of results.csv)."""
  num_seeds = check_int("num_seeds", config.num_seeds, 1)
  axes = _axes(config, experiment.training_axes)
  seeds = [config.base.seed + i for i in range(num_seeds)]
  return [GridRun(tuple((run_field, value) for (_, run_field, _), value in zip(axes, combo)), seed)
          for combo in itertools.product(*(values for _, _, values in axes)) for seed in seeds]


def evaluation_points(experiment: Experiment, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Every evaluation point of the grid (a dict of evaluation fields; [{}] without evaluation axes)."""
  axes = _axes(config, experiment.evaluation_axes)
  return [{run_field: value for (_, run_field, _), value in zip(axes, combo)}
          for combo in itertools.product(*(values for _, _, values in axes))]


def coordinate_fields(experiment: Experiment, config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """results.csv's leading columns: the run fields of the training axes, the seed, the evaluation fields."""
  training = tuple(run_field for _, run_field, _ in _axes(config, experiment.training_axes))
  evaluation = tuple(run_field for _, run_field, _ in _axes(config, experiment.evaluation_axes))
  return training + ("seed",) + evaluation


def _grid_field(experiment: Experiment, field: str) -> str:
  """The sweep config field a run field's error points at."""
  for axes in (experiment.training_axes, experiment.evaluation_axes):
    for sweep_field, run_field in axes.items():
      if run_field == field:
        return sweep_field
  return f"base.{field}"


def validate_sweep_config(experiment: Experiment, config: ml_collections.ConfigDict
                          ) -> tuple[list[GridRun], list[dict[str, Any]]]:
  """Checks the base config and every grid point before anything is compiled; returns runs and evaluation points."""
  runs = expand_grid(experiment, config)
  points = evaluation_points(experiment, config)
  for run in runs:
    for point in points:
      try:
        experiment.validate(with_fields(run.config(config.base), point))
      except ConfigError as error:
        field = str(error).split("=")[0].split(" ")[0]
        raise ConfigError(f"{_grid_field(experiment, field)}: {error}") from None
  return runs, points


def _group_key(experiment: Experiment, run: GridRun) -> tuple:
  return tuple((field, value) for field, value in run.values if field not in experiment.array_fields)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A sweep's runs and evaluation points, and its runs grouped by the programs they share."""
  runs: list[GridRun]
  points: list[dict[str, Any]]
  groups: dict[tuple, list[GridRun]]  # group key -> its runs, in grid order
  names: dict[tuple, str]             # group key -> its folder under groups/
  group_of: dict[GridRun, tuple]      # run -> its group key


def plan(experiment: Experiment, config: ml_collections.ConfigDict, runs: list[GridRun] | None = None,
         points: list[dict[str, Any]] | None = None) -> Plan:
  """Groups the grid's runs (`runs`, `points`: from `validate_sweep_config`, or expanded here unchecked)."""
  runs = expand_grid(experiment, config) if runs is None else runs
  points = evaluation_points(experiment, config) if points is None else points
  groups: dict[tuple, list[GridRun]] = {}
  for run in runs:
    groups.setdefault(_group_key(experiment, run), []).append(run)
  fields = [field for field, _ in next(iter(groups))]
  varying = [f for f in fields if len({dict(key)[f] for key in groups}) > 1]
  names = {key: experiment.group_name(members[0].config(config.base), varying) for key, members in groups.items()}
  if len(set(names.values())) != len(names):
    raise ConfigError(f"experiment {experiment.name!r} names two groups of this grid alike: "
                      f"{sorted(names.values())}")
  return Plan(runs, points, groups, names, {run: key for key, members in groups.items() for run in members})


def _check_workdir(experiment: Experiment, workdir: str, config: ml_collections.ConfigDict, overwrite: bool) -> None:
  """Refuses a workdir that holds another sweep (in every process); process 0 then claims it.

  Bookkeeping fields, evaluation fields and evaluation axes may change: a rerun
  with new evaluation values re-evaluates the trained runs.
  """
  path = os.path.join(workdir, SWEEP_CONFIG_FILE)
  free = set(experiment.bookkeeping_fields) | set(experiment.evaluation_fields)
  # An axis set to None is not swept: the same sweep as one written before the axis existed.
  strip = lambda c: {**{k: v for k, v in c.items()
                        if k not in experiment.evaluation_axes and k != "base" and v is not None},
                     "base": {k: v for k, v in c["base"].items() if k not in free}}
  wanted = files.to_builtin(config.to_dict())
  held = files.read_json(path) if os.path.exists(path) else None
  if held is not None:  # base fields added to the code since the sweep was written: at their defaults
    held = {**held, "base": workdirs.with_defaults(held["base"], experiment.defaults())}
  if not overwrite and held is not None and strip(held) != strip(wanted):
    raise ConfigError(f"workdir={workdir!r} holds a sweep of a different config: use a new --workdir "
                      "or pass --overwrite")
  if jax.process_index() == 0:
    if overwrite:
      files.remove(workdir, (SWEEP_CONFIG_FILE, "groups", "results.csv", "figures"))
    files.write_json(path, wanted)
  distributed.barrier("sweep: workdir claimed")


def _rows_path(workdir: str, group: str) -> str:
  return os.path.join(workdir, "groups", group, ROWS_FILE)


def _finished_rows(path: str, points: list[dict[str, Any]]) -> list[dict] | None:
  """A group's rows if it was trained and evaluated at exactly `points`, else None."""
  if not os.path.exists(path):
    return None
  held = files.read_json(path)
  if not isinstance(held, dict):  # a sweep written before evaluation points existed: resume it (no retraining)
    return None
  return held["rows"] if held["eval_points"] == files.to_builtin(points) else None


def training_figures(group: Group, result: trainer.FitResult) -> list[dict[str, Any]]:
  """Each run's final training loss, steps and status ('finished' or 'diverged at step N')."""
  last = result.history[-1]["loss"] if result.history else None
  figures = []
  for r in range(len(group.configs)):
    diverged = int(result.diverged_at[r])
    loss = None if diverged or last is None else (last[r] if isinstance(last, list) else last)
    figures.append({"final_train_loss": loss, "steps": group.settings.steps,
                    "status": f"diverged at step {diverged}" if diverged else "finished"})
  return figures


def group_rows(group: Group, runs: Sequence[GridRun], points: Sequence[dict[str, Any]], params: Any,
               training: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (run, evaluation point), run-major: the grid coordinates, the experiment's metrics, `training`."""
  evaluations = group.evaluate(params, points)
  rows = []
  for r, run in enumerate(runs):
    for point, evaluation in zip(points, evaluations):
      metrics = evaluation[r] if training[r]["status"] == "finished" else {k: None for k in evaluation[r]}
      rows.append({**run.coordinates(), **point, **metrics, **training[r]})
  return rows


def _trained(group: Group, group_dir: str) -> tuple[Any, list[dict[str, Any]]]:
  """One group's parameters and training figures: trained now (params written), or read back if trained before."""
  params_path = os.path.join(group_dir, workdirs.PARAMS_FILE)
  rows_path = os.path.join(group_dir, ROWS_FILE)
  if os.path.exists(rows_path) and os.path.exists(params_path):
    return workdirs.load_params(params_path), files.read_json(rows_path)["training"]
  result = group.fit(group_dir)
  workdirs.save_params(params_path, result.state.params)
  return result.state.params, training_figures(group, result)


def _evaluated(group: Group, runs: list[GridRun], points: list[dict[str, Any]], group_dir: str, params: Any,
               training: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One trained group's rows at every evaluation point, written to its rows.json."""
  rows = group_rows(group, runs, points, params, training)
  files.write_json(os.path.join(group_dir, ROWS_FILE), {"eval_points": points, "training": training, "rows": rows})
  return rows


def _group_cost(experiment: Experiment, runs: list[GridRun], base: ml_collections.ConfigDict) -> float:
  return len(runs) * experiment.cost(runs[0].config(base))


def write_results_csv(rows: list[dict[str, Any]], path: str, columns: Sequence[str]) -> None:
  """One row per run and evaluation point: the grid coordinates, then the metrics (7 significant digits)."""
  files.write_csv(path, rows, columns, significant=7)


def sweep(experiment: Experiment, config: ml_collections.ConfigDict, workdir: str,
          overwrite: bool = False) -> list[dict[str, Any]]:
  """Trains every run of the grid (skipping finished groups) and writes results.csv and figures.

  Returns the rows of results.csv (with any non-tabular metrics of the experiment).
  Under jax.distributed (`engine.distributed`) every process calls this with the
  same arguments: each trains its share of the unfinished groups on its own
  devices, and process 0 waits for every group's rows and writes the table and
  figures; the other processes return the rows they trained.
  """
  runs, points = validate_sweep_config(experiment, config)
  process = jax.process_index()
  # Each process of a multi-process sweep holds its own lock: a second sweep started on the
  # same workdir is refused at its process 0.
  lock_name = workdirs.LOCK_FILE if process == 0 else f"{workdirs.LOCK_FILE}.process{process}"
  # Programs compile beside the training here, which keeps every core busy: their code is
  # generated on the compiling thread alone (`compiling.serial_codegen`).
  with workdirs.lock(workdir, lock_name), compiling.serial_codegen():
    return _sweep_locked(experiment, config, workdir, overwrite, runs, points)


def _sweep_locked(experiment: Experiment, config: ml_collections.ConfigDict, workdir: str, overwrite: bool,
                  runs: list[GridRun], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
  _check_workdir(experiment, workdir, config, overwrite)
  grid = plan(experiment, config, runs, points)
  groups, names = grid.groups, grid.names
  process, num_processes = jax.process_index(), jax.process_count()
  # Every process looks before any writes, so all agree on what is left to do.
  unfinished = [key for key in groups if _finished_rows(_rows_path(workdir, names[key]), points) is None]
  distributed.barrier("sweep: planned")
  shares = distributed.assign([_group_cost(experiment, groups[key], config.base) for key in unfinished],
                              num_processes)
  mine = [unfinished[i] for i in shares[process]]
  where = f" (process {process} of {num_processes}: {len(mine)} of {len(unfinished)} unfinished groups)" \
      if num_processes > 1 else ""
  logging.info("Sweep of %d runs x %d evaluation points in %d groups (%d device(s))%s into %s", len(runs),
               len(points), len(groups), jax.local_device_count(), where, workdir)
  if num_processes > 1 and not mine:
    logging.warning("process %d has no group to train: a grid of %d unfinished groups over %d processes "
                    "(a group, the runs that share a program, is the unit of work)", process, len(unfinished),
                    num_processes)
  rows_by_group: dict[tuple, list[dict]] = {}
  t_start, trained = time.perf_counter(), 0
  # One group runs at a time (two in threads deadlocked XLA's CPU runtime). Compiling runs
  # nothing, so one thread compiles ahead of the group that runs: the next group's training
  # programs while this one trains, its evaluation programs from when this one evaluates
  # (an evaluation leaves a core idle, where the training uses both).
  compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl_theory-compile")
  try:
    jobs = [Group(experiment, [run.config(config.base) for run in groups[key]], label=names[key]) for key in mine]
    first_point = lambda job: [with_fields(c, points[0]) for c in job.configs]
    if jobs:  # nothing else could run yet: the thread takes the evaluation, this thread the training
      jobs[0].compile_evaluation(compiler, first_point(jobs[0]))
      jobs[0].compile_training()
    for i, (key, job) in enumerate(zip(mine, jobs)):
      following = jobs[i + 1] if i + 1 < len(jobs) else None
      if following is not None:
        following.compile_training(compiler)
      else:  # the figures' matplotlib (0.35 s to import), on the thread while the last group runs
        compiler.submit(importlib.import_module, "icl_theory.engine.plotting")
      group_dir = os.path.dirname(_rows_path(workdir, names[key]))
      params, training = _trained(job, group_dir)
      if following is not None:
        following.compile_evaluation(compiler, first_point(following))
      rows_by_group[key] = _evaluated(job, groups[key], points, group_dir, params, training)
      trained += len(groups[key])
      elapsed = time.perf_counter() - t_start
      left = sum(len(groups[g]) for g in mine) - trained
      logging.info("sweep: %d/%d runs done here (group %s) | %.0f s | ETA %s", trained, trained + left, names[key],
                   elapsed, trainer.format_eta(elapsed / trained * left))
  finally:
    compiler.shutdown(wait=False, cancel_futures=True)  # after an error: drop the groups not yet compiled
  if process != 0:
    return [row for key in mine for row in rows_by_group[key]]
  by_run: dict[GridRun, list[dict]] = {}
  for key, members in groups.items():
    rows = rows_by_group.get(key) or _wait_for_rows(_rows_path(workdir, names[key]), points)
    for r, run in enumerate(members):
      by_run[run] = rows[r * len(points):(r + 1) * len(points)]
  rows = [row for run in runs for row in by_run[run]]
  write_results_csv(rows, os.path.join(workdir, "results.csv"), coordinate_fields(experiment, config) + experiment.metrics)
  experiment.plot_sweep(rows, os.path.join(workdir, "figures"))
  return rows


def _wait_for_rows(path: str, points: list[dict[str, Any]], poll_seconds: float = 1.0) -> list[dict]:
  """A group's rows, waiting for the process that trains it to write them."""
  waited = 0.0
  while (rows := _finished_rows(path, points)) is None:
    if waited % 60 == 0:
      logging.info("waiting for %s (another process trains that group)", path)
    time.sleep(poll_seconds)
    waited += poll_seconds
  return rows
