"""Experiments: each turns a config into a trained model, its analysis and a workdir of results."""

from __future__ import annotations

import datetime
import os
from typing import Any

import ml_collections

from icl_theory import sharding
from icl_theory.experiments import classification, lsa_regression
from icl_theory.validation import check_choice

_RUNNERS = {"lsa_regression": lsa_regression.run, "classification": classification.run}
_FORMATTERS = {"lsa_regression": lsa_regression.format_summary, "classification": classification.format_summary}
# Whether a single run gains from splitting its batch over one CPU device per core (measured
# on 2 cores): the classifier's steps do (+18%); an LSA step on the Wishart sampler is one
# fused loop that XLA already spreads over the cores, and its all-reduces cost more (-40%).
_CPU_DATA_PARALLEL = {"lsa_regression": False, "classification": True}


def default_workdir(experiment: str, root: str = "runs") -> str:
  """A fresh folder runs/<experiment>-<timestamp>[-k]."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path, k = os.path.join(root, f"{experiment}-{stamp}"), 1
  while os.path.exists(path):
    path, k = os.path.join(root, f"{experiment}-{stamp}-{k}"), k + 1
  return path


def train(config: ml_collections.ConfigDict, workdir: str | None = None, overwrite: bool = False) -> Any:
  """Runs the experiment `config.experiment` into `workdir` (a fresh folder if None).

  Returns the experiment's result, a `RunResult` of the experiment's module with
  `.summary` (the summary.json dict), `.params`, `.task`, `.history`, `.workdir`.
  """
  experiment = check_choice("experiment", config.get("experiment"), tuple(_RUNNERS))
  workdir = workdir or default_workdir(experiment)
  return _RUNNERS[experiment](config, workdir, overwrite=overwrite)


def use_cpu_cores(config: ml_collections.ConfigDict) -> None:
  """Before JAX starts: one CPU device per core for a single run, where its experiment gains from it."""
  if _CPU_DATA_PARALLEL.get(config.get("experiment"), False):
    sharding.use_cpu_cores(divides=config.get("batch_size"))


def format_summary(summary: dict[str, Any]) -> str:
  """The console table of a run's summary.json dict, for its experiment."""
  experiment = check_choice("experiment", summary["config"].get("experiment"), tuple(_FORMATTERS))
  return _FORMATTERS[experiment](summary)
