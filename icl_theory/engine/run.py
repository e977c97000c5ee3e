"""A single run: a group of one, trained, evaluated and written to its workdir; and `load_run` to read it back.

`train(experiment, config, workdir)` writes, in `workdir`:
  summary.json    the config, the experiment's setting and metrics (`Experiment.evaluate`,
                  the same dict a sweep's row holds), its details, training figures, timings
  metrics.jsonl   one row per logging point (step, loss, learning rate, speed)
  params.msgpack  the trained parameters (`load_run` reads them back)
  <figure>.png    the experiment's figure of the run
  checkpoints/    orbax checkpoints; rerunning with the same workdir resumes
  config.json     the config, to refuse a different one in the same workdir
  .lock           held while a process works here; a second one is refused
"""

from __future__ import annotations

import importlib
import logging as pylogging
import os
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from icl_theory.engine import files, precision, progress, sweep as sweeps, trainer, workdir as workdirs
from icl_theory.engine.experiment import Experiment
from icl_theory.engine.group import Group, eval_key
from icl_theory.engine.validation import ConfigError

_ENGINE_OUTPUTS = ("summary.json", "metrics.jsonl", "config.json", "checkpoints", workdirs.PARAMS_FILE)


class RunResult(NamedTuple):
  """What `icl_theory.train` returns: the summary.json dict, and what a notebook needs next."""
  summary: dict[str, Any]
  params: Any          # the trained parameters, without a run axis
  task: Any            # the run's task (RegressionTask, ClassificationTask, ...)
  history: list[dict]  # the metrics.jsonl rows
  workdir: str


def free_fields(experiment: Experiment) -> tuple[str, ...]:
  """Config fields that may change between a run and its rerun in the same workdir."""
  return experiment.bookkeeping_fields + experiment.evaluation_fields


def train(experiment: Experiment, config: ml_collections.ConfigDict, workdir: str,
          overwrite: bool = False) -> RunResult:
  """Trains one run of `experiment`, evaluates it and writes `workdir` (see the module docstring).

  Raises ConfigError for a bad field (before anything compiles) or a busy or
  foreign workdir, and `trainer.TrainingDiverged` if the loss blows up.
  """
  t_start = time.perf_counter()
  task = experiment.validate(config)
  with workdirs.lock(workdir):
    workdirs.claim(workdir, config.to_dict(), _ENGINE_OUTPUTS + (experiment.run_figure,), free_fields(experiment),
                   overwrite, defaults=experiment.defaults())
    group = Group(experiment, [config], data_parallel=config.get("data_parallel", True))
    logging.info("Training %s into %s", experiment.describe(config, task), workdir)
    # matplotlib takes 0.35 s to import: the run figure's plotting loads on a thread while the run trains.
    threading.Thread(target=importlib.import_module, args=("icl_theory.engine.plotting",), daemon=True).start()
    result = group.fit(workdir, stop_on_divergence=True)
    params = jax.tree.map(lambda x: x[0], result.state.params)
    t_eval = time.perf_counter()
    (row,), = group.evaluate(result.state.params)
    details = {}
    if type(experiment).details is not Experiment.details:  # the experiment has tables to add
      with progress.timed("evaluating the run's tables"):
        details = precision.scoped(experiment.details)(params, task, config, eval_key(config.seed))
    history = result.history
    summary: dict[str, Any] = {
        "config": config.to_dict(),
        **experiment.summary_header(task, config),
        **row,
        **details,
        **result.run_figures(config.batch_size),
        "eval_seconds": time.perf_counter() - t_eval,
        "status": "finished",
    }
    summary["wall_seconds"] = time.perf_counter() - t_start
    workdirs.save_params(os.path.join(workdir, workdirs.PARAMS_FILE), params)
    files.write_json(os.path.join(workdir, "summary.json"), summary)
    experiment.plot_run(summary, history, os.path.join(workdir, experiment.run_figure))
  return RunResult(files.to_builtin(summary), params, task, history, workdir)



class LoadedRun(NamedTuple):
  """A finished run read back by `load_run`."""
  config: ml_collections.ConfigDict
  task: Any
  params: Any                  # without a run axis: `compare`, `effective_gamma`, model.apply take it
  summary: dict[str, Any] | list[dict[str, Any]]  # summary.json; a sweep's run: its row, or rows (several points)
  history: list[dict]          # metrics.jsonl, with this run's loss
  workdir: str


def load_run(workdir: str, experiments: Callable[[str], Experiment],
             run: int | dict[str, Any] | None = None) -> LoadedRun:
  """Reads a single run's workdir, or one run of a sweep's, without writing anything.

  `experiments`: the experiment of a name (`icl_theory.experiments.get`). `run`
  (sweeps only): the run's index in the grid's order, or a dict of its
  coordinates (training-axis fields and seed) that matches exactly one run.
  """
  if os.path.exists(os.path.join(workdir, sweeps.SWEEP_CONFIG_FILE)):
    return _load_sweep_run(workdir, experiments, run)
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ConfigError(f"workdir={workdir!r} holds no run or sweep (no config.json, no "
                      f"{sweeps.SWEEP_CONFIG_FILE})")
  if run is not None:
    raise ConfigError(f"run={run!r} is not allowed: {workdir!r} holds a single run, not a sweep")
  path = os.path.join(workdir, workdirs.PARAMS_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"workdir={workdir!r} holds no finished run (no {workdirs.PARAMS_FILE}): train it first")
  config = ml_collections.ConfigDict(files.read_json(os.path.join(workdir, "config.json")))
  experiment = experiments(config.get("experiment"))
  return LoadedRun(config, experiment.build_task(config), workdirs.load_params(path),
                   files.read_json(os.path.join(workdir, "summary.json")),
                   files.read_jsonl(os.path.join(workdir, "metrics.jsonl")), workdir)


def load_snapshots(workdir: str, experiments: Callable[[str], Experiment],
                   run: int | dict[str, Any] | None = None) -> list[tuple[int, Any]]:
  """(step, params) of a finished run at initialisation (step 0) and at every checkpoint still kept.

  For analyses over training (keep them all with `keep_checkpoints`). Reads
  without writing; `run` as in `load_run`.
  """
  loaded = load_run(workdir, experiments, run)
  config = loaded.config
  experiment = experiments(config.get("experiment"))
  init = experiment.objective(loaded.task, config, 1).init(trainer.run_keys(config.seed)[0])
  snapshots = [(0, jax.device_get(init))]
  directory, index = _checkpoint_dir(workdir, experiment, run)
  if not os.path.isdir(directory):
    return snapshots
  ocp = trainer.orbax_checkpoint()
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  with _ReadOnlyNotice(), ocp.CheckpointManager(os.path.abspath(directory), options=options) as manager:
    for step in sorted(manager.all_steps()):
      state = manager.restore(step, args=ocp.args.StandardRestore())["state"]
      snapshots.append((int(step), jax.tree.map(lambda x: np.asarray(x)[index], state["params"])))
  return snapshots


class _ReadOnlyNotice(pylogging.Filter):
  """Within the block, drops orbax's warning that a manager opened read-only is read-only (it is on purpose)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return "read only" not in record.getMessage()

  def __enter__(self):
    pylogging.getLogger("absl").addFilter(self)
    return self

  def __exit__(self, *exc):
    pylogging.getLogger("absl").removeFilter(self)


def _checkpoint_dir(workdir: str, experiment: Experiment, run: int | dict[str, Any] | None) -> tuple[str, int]:
  """The checkpoints folder of a single run (run axis index 0), or of a sweep run's group and its index there."""
  if run is None:
    return os.path.join(workdir, "checkpoints"), 0
  plan = sweeps.plan(experiment, ml_collections.ConfigDict(
      files.read_json(os.path.join(workdir, sweeps.SWEEP_CONFIG_FILE))))
  chosen = _choose(plan, run)
  key = plan.group_of[chosen]
  return os.path.join(workdir, "groups", plan.names[key], "checkpoints"), plan.groups[key].index(chosen)


def _choose(plan: sweeps.Plan, run: Any) -> sweeps.GridRun:
  """The grid run that `run` (an index or a dict of coordinates) names."""
  if isinstance(run, bool) or not isinstance(run, (int, dict)):
    raise ConfigError(f"run={run!r} is not allowed: for a sweep, an index 0..{len(plan.runs) - 1} or a dict of "
                      f"coordinates ({', '.join(plan.runs[0].coordinates())})")
  if isinstance(run, int):
    if not 0 <= run < len(plan.runs):
      raise ConfigError(f"run={run} is not allowed: an index 0..{len(plan.runs) - 1}")
    return plan.runs[run]
  matches = [r for r in plan.runs if all(r.coordinates().get(k, object()) == v for k, v in run.items())]
  if len(matches) != 1:
    raise ConfigError(f"run={run!r} is not allowed: it matches {len(matches)} runs of the sweep, not one "
                      f"(coordinates: {', '.join(plan.runs[0].coordinates())})")
  return matches[0]


def _load_sweep_run(workdir: str, experiments: Callable[[str], Experiment],
                    run: int | dict[str, Any] | None) -> LoadedRun:
  sweep_config = ml_collections.ConfigDict(files.read_json(os.path.join(workdir, sweeps.SWEEP_CONFIG_FILE)))
  experiment = experiments(sweep_config.base.get("experiment"))
  plan = sweeps.plan(experiment, sweep_config)
  chosen = _choose(plan, run)
  key = plan.group_of[chosen]
  index = plan.groups[key].index(chosen)
  group_dir = os.path.join(workdir, "groups", plan.names[key])
  path = os.path.join(group_dir, workdirs.PARAMS_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"run={run!r} is not trained yet ({path} is missing): run the sweep first")
  params = jax.tree.map(lambda x: x[index], workdirs.load_params(path))
  rows = files.read_json(os.path.join(group_dir, sweeps.ROWS_FILE))["rows"]
  num_points = len(rows) // len(plan.groups[key])
  mine = rows[index * num_points:(index + 1) * num_points]
  history = [{**row, "loss": row["loss"][index] if isinstance(row["loss"], list) else row["loss"]}
             for row in files.read_jsonl(os.path.join(group_dir, "metrics.jsonl"))]
  config = chosen.config(sweep_config.base)
  return LoadedRun(config, experiment.build_task(config), params, mine[0] if num_points == 1 else mine, history,
                   workdir)
