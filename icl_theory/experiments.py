"""The experiments by name, and the Python API over the engine: `train`, `run_sweep`, `load_run`.

An experiment package registers one `engine.experiment.Experiment` here; a
config names it in `config.experiment` (a sweep config in `base.experiment`).
A new experiment is one new package and one line in `_PACKAGES`, or a call to
`register` from the user's own code.
"""

from __future__ import annotations

import importlib
from typing import Any

import ml_collections

from icl_theory.engine import run as runs
from icl_theory.engine import compile_cache, progress, sharding, sweep as sweeps, workdir as workdirs
from icl_theory.engine.experiment import Experiment
from icl_theory.engine.validation import ConfigError, check_choice

# name -> the module whose EXPERIMENT it is (imported when first asked for).
_PACKAGES = {"lsa_regression": "icl_theory.regression.experiment",
             "classification": "icl_theory.classification.experiment"}
_REGISTERED: dict[str, Experiment] = {}

RunResult = runs.RunResult
LoadedRun = runs.LoadedRun


def register(experiment: Experiment) -> None:
  """Makes `experiment` available by its name (`config.experiment`)."""
  _REGISTERED[experiment.name] = experiment


def names() -> tuple[str, ...]:
  return tuple(dict.fromkeys((*_PACKAGES, *_REGISTERED)))


def get(name: Any) -> Experiment:
  """The experiment called `name` (ConfigError naming the allowed ones otherwise)."""
  name = check_choice("experiment", name, names())
  if name not in _REGISTERED:
    register(importlib.import_module(_PACKAGES[name]).EXPERIMENT)
  return _REGISTERED[name]


def of(config: ml_collections.ConfigDict) -> Experiment:
  """The experiment of a run config, or of a sweep config (its `base`)."""
  return get(config.base.get("experiment") if "base" in config else config.get("experiment"))


def train(config: ml_collections.ConfigDict, workdir: str | None = None, overwrite: bool = False,
          verbose: bool = True) -> runs.RunResult:
  """Trains and evaluates one run of `config.experiment` into `workdir` (a fresh runs/... folder if None).

  Returns a `RunResult`: `.summary` (the summary.json dict), `.params`, `.task`,
  `.history`, `.workdir`. Rerunning on the same workdir resumes. `verbose`: print
  progress lines (Python's logging, to stderr unless logging is set up already).
  Turns on JAX's persistent compilation cache (`engine.compile_cache`).
  """
  experiment = of(config)
  compile_cache.enable()
  with progress.shown(verbose):
    return runs.train(experiment, config, workdir or workdirs.default_workdir(experiment.name), overwrite)


def run_sweep(config: ml_collections.ConfigDict, workdir: str | None = None, overwrite: bool = False,
              verbose: bool = True) -> list[dict[str, Any]]:
  """Trains every run of a sweep config's grid into `workdir` (resumable); returns results.csv's rows."""
  compile_cache.enable()
  with progress.shown(verbose):
    return sweeps.sweep(of(config), config, workdir or workdirs.default_workdir("sweep"), overwrite)


def load_run(workdir: str, run: int | dict[str, Any] | None = None) -> runs.LoadedRun:
  """A finished run, read back without writing anything: config, task, params (no run axis), summary, history.

  `workdir` is a single run's, or a sweep's with `run` naming one of its runs:
  its index in the grid's order, or its coordinates (e.g. {"n": 16, "seed": 1}).
  """
  return runs.load_run(workdir, get, run)


def load_snapshots(workdir: str, run: int | dict[str, Any] | None = None) -> list[tuple[int, Any]]:
  """(step, params) of a finished run at initialisation and at each kept checkpoint (`run` as in `load_run`)."""
  return runs.load_snapshots(workdir, get, run)


def use_cpu_cores(config: ml_collections.ConfigDict) -> None:
  """Before JAX starts: one CPU device per core for a single run, where its experiment gains from it."""
  try:
    split = bool(config.get("data_parallel", True)) and of(config).splits_over_cpu_cores(config)
  except (AttributeError, KeyError, TypeError, ValueError, ConfigError):
    split = False  # a bad field: validation names it next, with its own message
  if split:
    sharding.use_cpu_cores(divides=config.get("batch_size"))


def format_summary(summary: dict[str, Any]) -> str:
  """The console table of a run's summary.json dict, for its experiment."""
  return get(summary["config"].get("experiment")).format_summary(summary)
