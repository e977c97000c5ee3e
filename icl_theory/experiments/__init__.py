"""Experiments: each turns a config into a trained model, its analysis and a workdir of results."""

from __future__ import annotations

import datetime
import os
from typing import Any

import ml_collections

from icl_theory.experiments import classification, lsa_regression
from icl_theory.validation import check_choice

_RUNNERS = {"lsa_regression": lsa_regression.run, "classification": classification.run}
_FORMATTERS = {"lsa_regression": lsa_regression.format_summary, "classification": classification.format_summary}


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


def format_summary(summary: dict[str, Any]) -> str:
  """The console table of a run's summary.json dict, for its experiment."""
  experiment = check_choice("experiment", summary["config"].get("experiment"), tuple(_FORMATTERS))
  return _FORMATTERS[experiment](summary)
